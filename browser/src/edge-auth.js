// edge-auth for the browser: the client half of DESIGN §7. The access token lives in
// this module's memory only; the refresh token in the HttpOnly cookie the origin sets
// in browser mode (`X-Token-Delivery: cookie`), which no script can read.
//
// - `auth.fetch` attaches the access token; a 401 `invalid_token` is refreshed once and
//   the request sent once more.
// - Refreshes ahead of expiry (a fifth of the lifetime, at most a minute, minus jitter),
//   timed from the token's `exp` corrected by the server's `Date`, so a wrong local
//   clock does not matter.
// - One refresh in flight per tab. Across tabs there is no lock that a dead or frozen
//   tab could hold: a tab about to refresh says so and the others hold theirs for 3 s;
//   the tab that refreshed hands its token to the others (BroadcastChannel, same
//   origin, memory only); two tabs that refresh at once both get the same successor
//   from the server's grace window.
// - "Session ended" (`invalid_grant`: reuse, revocation, logout elsewhere) logs out every
//   tab; a 503, 429 or network failure does not: the token is kept while valid and the
//   refresh retried with backoff (or after `Retry-After`).

const DELIVERY = { "x-token-delivery": "cookie" };

/** What `fetch` and `login` throw for our outage (not a logout). */
export class AuthUnavailableError extends Error {
  constructor(retryAfterMs) {
    super("the auth service is temporarily unavailable");
    this.name = "AuthUnavailableError";
    this.retryAfterMs = retryAfterMs;
  }
}

/** What `fetch` throws when there is no session: log in. */
export class LoggedOutError extends Error {
  constructor() {
    super("not logged in");
    this.name = "LoggedOutError";
  }
}

export class EdgeAuth extends EventTarget {
  #base;
  #token = null;
  #expiresAt = 0; // local ms
  #lifetime = 0; // ms
  #refreshing = null;
  #timer = 0;
  #failures = 0;
  #notBefore = 0; // local ms: no refresh attempt before (backoff)
  #othersUntil = 0; // local ms: another tab said it is refreshing until then
  #channel;

  /** @param {{ base?: string }} [options] the edge's URL; default: this page's origin */
  constructor(options = {}) {
    super();
    this.#base = (options.base ?? "").replace(/\/$/, "");
    this.#channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(`edge-auth:${this.#base}`) : null;
    this.#channel?.addEventListener("message", (e) => this.#onMessage(e.data));
    if (typeof document !== "undefined") {
      // Timers are throttled or frozen in hidden tabs: catch up when shown again.
      document.addEventListener("visibilitychange", () => {
        if (document.visibilityState === "visible" && this.#token) this.#schedule();
      });
    }
  }

  /** Whether a session is held, and until when its access token lives (ms, local clock). */
  get loggedIn() {
    return this.#token !== null;
  }
  get expiresAt() {
    return this.#expiresAt;
  }

  /** Logs in; the refresh token arrives as the HttpOnly cookie. */
  async login(username, password) {
    const r = await this.#post("/auth/login", {}, JSON.stringify({ username, password }));
    if (r.status === 200) return this.#take(r, "login");
    if (r.status >= 500 || r.status === 429) throw new AuthUnavailableError(retryAfter(r));
    const body = await r.json().catch(() => ({}));
    throw Object.assign(new Error(body.error_description ?? `login failed (${r.status})`), { status: r.status, code: body.error });
  }

  /** At page load: resumes the session the cookie holds, if any. */
  async restore() {
    try {
      await this.#refresh();
      return true;
    } catch (e) {
      if (e instanceof LoggedOutError) return false;
      throw e;
    }
  }

  /** `fetch` with the access token. */
  async fetch(input, init) {
    const request = new Request(input, init);
    const retry = request.clone(); // before the body is sent: the retry's copy
    const token = await this.#usableToken();
    const response = await fetch(this.#authorized(request, token));
    if (response.status !== 401 || !/error="invalid_token"/.test(response.headers.get("www-authenticate") ?? "")) {
      return response;
    }
    const fresh = token === this.#token ? await this.#refresh() : this.#token;
    if (!fresh) throw new LoggedOutError();
    return fetch(this.#authorized(retry, fresh));
  }

  /** Ends this session (this browser); every tab logs out. */
  async logout() {
    await this.#end("/auth/logout");
  }

  /** Ends every session of the user; this browser's tabs log out now, others at their next call. */
  async logoutEverywhere() {
    await this.#end("/auth/logout-all");
  }

  async #end(path) {
    const token = this.#token && Date.now() < this.#expiresAt ? this.#token : await this.#refresh().catch(() => null);
    if (token) {
      const r = await this.#post(path, { authorization: `Bearer ${token}` }, null);
      if (r.status >= 500) throw new AuthUnavailableError(retryAfter(r));
    }
    this.#loggedOut("logout", true);
  }

  #authorized(request, token) {
    const r = new Request(request);
    r.headers.set("authorization", `Bearer ${token}`);
    return r;
  }

  // A token to send now: the held one while valid, else the one refresh in flight.
  async #usableToken() {
    if (this.#token && Date.now() < this.#expiresAt) return this.#token;
    if (!this.#token) throw new LoggedOutError();
    const token = await this.#refresh();
    if (!token) throw new LoggedOutError();
    return token;
  }

  // One refresh in flight per tab; resolves to the new token, rejects with
  // LoggedOutError (session ended) or AuthUnavailableError (our outage).
  #refresh() {
    this.#refreshing ??= this.#doRefresh().finally(() => {
      this.#refreshing = null;
    });
    return this.#refreshing;
  }

  async #doRefresh() {
    const wait = this.#notBefore - Date.now();
    if (wait > 0) throw new AuthUnavailableError(wait);
    let r;
    try {
      r = await this.#post("/auth/refresh", {}, null);
    } catch {
      throw this.#failed(null);
    }
    if (r.status === 200) {
      await this.#take(r, "refresh");
      return this.#token;
    }
    const body = await r.json().catch(() => null);
    if ((r.status === 401 || r.status === 400) && body?.error === "invalid_grant") {
      // Tell the other tabs only if this one had a session (not at a page load
      // without a cookie).
      this.#loggedOut("ended", this.#token !== null);
      throw new LoggedOutError();
    }
    throw this.#failed(r);
  }

  // Our outage: keep the token while valid, try again after a backoff.
  #failed(response) {
    const wait = (response && retryAfter(response)) || Math.min(30_000, 1000 * 2 ** this.#failures);
    this.#failures++;
    this.#notBefore = Date.now() + wait;
    this.dispatchEvent(new CustomEvent("unavailable", { detail: { retryAfterMs: wait } }));
    clearTimeout(this.#timer);
    if (this.#token) this.#timer = setTimeout(() => this.#refresh().catch(() => {}), wait);
    return new AuthUnavailableError(wait);
  }

  async #take(response, why) {
    const body = await response.json();
    const payload = JSON.parse(atob(body.access_token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    // The server's clock minus ours, from its Date header (1 s resolution).
    const serverNow = Date.parse(response.headers.get("date") ?? "");
    const skew = Number.isNaN(serverNow) ? 0 : serverNow - Date.now();
    const expiresAt = Number.isFinite(payload.exp) ? payload.exp * 1000 - skew : Date.now() + body.expires_in * 1000;
    const had = this.#token !== null;
    this.#adopt(body.access_token, expiresAt, body.expires_in * 1000);
    this.#channel?.postMessage({ type: "token", token: this.#token, expiresAt, lifetime: this.#lifetime });
    // A session resumed from the cookie is a login for this tab.
    this.dispatchEvent(new CustomEvent(had ? why : "login", { detail: { expiresAt } }));
  }

  #adopt(token, expiresAt, lifetime) {
    this.#token = token;
    this.#expiresAt = expiresAt;
    this.#lifetime = lifetime;
    this.#failures = 0;
    this.#notBefore = 0;
    this.#othersUntil = 0;
    this.#schedule();
  }

  // Refresh a fifth of the lifetime ahead (at most a minute), minus up to half of that
  // at random, so tabs (and users) do not all refresh at once.
  #schedule() {
    clearTimeout(this.#timer);
    const ahead = Math.min(60_000, this.#lifetime / 5);
    const at = this.#expiresAt - ahead - Math.random() * (ahead / 2);
    this.#timer = setTimeout(() => this.#proactive(), Math.max(0, at - Date.now()));
  }

  // The timer's refresh. A tab that starts one says so first, and the others hold
  // theirs for a few seconds: they get its token instead. Not a lock: if that tab dies
  // or sleeps, the others refresh when the hold runs out, or on expiry at their next
  // call.
  #proactive() {
    const wait = this.#othersUntil - Date.now();
    if (wait > 0) {
      this.#timer = setTimeout(() => this.#proactive(), wait);
      return;
    }
    this.#channel?.postMessage({ type: "refreshing", until: Date.now() + 3000 });
    this.#refresh().catch(() => {});
  }

  #onMessage(message) {
    if (message?.type === "refreshing") {
      this.#othersUntil = message.until;
    } else if (message?.type === "token" && message.expiresAt > this.#expiresAt) {
      const had = this.#token !== null;
      this.#adopt(message.token, message.expiresAt, message.lifetime);
      if (!had) this.dispatchEvent(new CustomEvent("login", { detail: { expiresAt: message.expiresAt } }));
    } else if (message?.type === "logout" && this.#token) {
      this.#loggedOut(message.reason, false);
    }
  }

  #loggedOut(reason, tell) {
    clearTimeout(this.#timer);
    const had = this.#token !== null;
    this.#token = null;
    this.#expiresAt = 0;
    if (tell) this.#channel?.postMessage({ type: "logout", reason });
    if (had || tell) this.dispatchEvent(new CustomEvent("logout", { detail: { reason } }));
  }

  #post(path, headers, body) {
    return fetch(`${this.#base}${path}`, {
      method: "POST",
      credentials: "include",
      headers: { ...DELIVERY, ...(body ? { "content-type": "application/json" } : {}), ...headers },
      body,
    });
  }
}

function retryAfter(response) {
  const seconds = Number(response.headers.get("retry-after"));
  return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 0;
}
