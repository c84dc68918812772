/** What `fetch`, `login` and the logouts throw for the auth service's outage: not a logout. */
export declare class AuthUnavailableError extends Error {
  name: "AuthUnavailableError";
  /** When to try again (from `Retry-After`, or the backoff), ms. */
  retryAfterMs: number;
}

/** What `fetch` throws when there is no session: log in. */
export declare class LoggedOutError extends Error {
  name: "LoggedOutError";
}

export interface EdgeAuthOptions {
  /** The edge's URL, e.g. "https://auth.example.com"; default: this page's origin. */
  base?: string;
}

export interface EdgeAuthEventMap {
  /** A session started in this tab: login, `restore`, or another tab's login. */
  login: CustomEvent<{ expiresAt: number }>;
  /** The access token was refreshed by this tab. */
  refresh: CustomEvent<{ expiresAt: number }>;
  /** The session is over in every tab: "logout" (asked) or "ended" (revoked, reused, logged out elsewhere). */
  logout: CustomEvent<{ reason: "logout" | "ended" }>;
  /** A refresh failed for our outage; the session is kept and retried after `retryAfterMs`. */
  unavailable: CustomEvent<{ retryAfterMs: number }>;
}

export declare class EdgeAuth extends EventTarget {
  constructor(options?: EdgeAuthOptions);
  /** Whether a session is held. */
  readonly loggedIn: boolean;
  /** When the access token expires, ms since the epoch on this machine's clock (skew corrected). */
  readonly expiresAt: number;
  /** Logs in (browser mode): the refresh token arrives as an HttpOnly cookie. */
  login(username: string, password: string): Promise<void>;
  /** At page load: resumes the session the cookie holds. Resolves to whether there was one. */
  restore(): Promise<boolean>;
  /** `fetch` with the access token; a 401 `invalid_token` is refreshed once and the request sent again. */
  fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
  /** Ends this browser's session; every tab logs out. */
  logout(): Promise<void>;
  /** Ends every session of the user; this browser's tabs now, others at their next call. */
  logoutEverywhere(): Promise<void>;
  addEventListener<K extends keyof EdgeAuthEventMap>(
    type: K,
    listener: (event: EdgeAuthEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}
