// The demo page's behaviour: everything it does goes through the browser package.
import { EdgeAuth, AuthUnavailableError, LoggedOutError } from "/edge-auth.js";

const auth = new EdgeAuth();
const $ = (id) => document.getElementById(id);
const log = (text) => {
  $("log").textContent = `${new Date().toLocaleTimeString()} ${text}\n` + $("log").textContent;
};
const status = (text, kind) => {
  $("status").textContent = text;
  $("status").className = kind ?? "";
};

function showSession(on) {
  $("session").classList.toggle("hidden", !on);
  $("anonymous").classList.toggle("hidden", on);
}

async function me() {
  try {
    const r = await auth.fetch("/api/me");
    // An answer that arrives after a logout does not show the user again.
    if (!auth.loggedIn) return 401;
    if (r.ok) {
      const body = await r.json();
      $("me").textContent = `Logged in as ${body.username ?? body.user_id}`;
      status(`Logged in as ${body.username ?? body.user_id}.`);
    } else {
      status(`/api/me answered ${r.status}`, "down");
    }
    return r.status;
  } catch (e) {
    if (e instanceof LoggedOutError) return 401;
    if (e instanceof AuthUnavailableError) status("The service is temporarily unavailable; still logged in.", "down");
    else status(`Network error: ${e.message}`, "down");
    return 0;
  }
}

async function sessions() {
  const r = await auth.fetch("/auth/sessions");
  if (!r.ok) return;
  const rows = await r.json();
  $("sessions").replaceChildren(
    ...rows.map((s) => {
      const tr = document.createElement("tr");
      for (const text of [s.created_at, s.last_used_at, s.user_agent ?? ""]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      const td = document.createElement("td");
      const button = document.createElement("button");
      button.className = "secondary";
      button.textContent = s.current ? "revoke (this one)" : "revoke";
      button.onclick = async () => {
        await auth.fetch(`/auth/sessions/${s.session_id}`, { method: "DELETE" });
        log(`revoked session ${s.session_id.slice(0, 8)}`);
        if (s.current) await auth.logout().catch(() => {});
        else sessions();
      };
      td.append(button);
      tr.append(td);
      return tr;
    }),
  );
}

auth.addEventListener("login", () => {
  showSession(true);
  log("logged in");
  me();
  sessions();
});
auth.addEventListener("refresh", (e) => log(`access token refreshed, valid until ${new Date(e.detail.expiresAt).toLocaleTimeString()}`));
auth.addEventListener("unavailable", (e) => log(`auth service unavailable, retrying in ${Math.round(e.detail.retryAfterMs / 1000)} s`));
auth.addEventListener("logout", (e) => {
  showSession(false);
  status(e.detail.reason === "ended" ? "Logged out: the session ended (revoked or logged out elsewhere)." : "Logged out.", "out");
  log(`logged out (${e.detail.reason})`);
});

setInterval(() => {
  $("life").textContent = auth.loggedIn ? `${Math.max(0, Math.round((auth.expiresAt - Date.now()) / 1000))} s` : "–";
}, 250);

$("credentials").onsubmit = async (e) => {
  e.preventDefault();
  try {
    await auth.login($("username").value, $("password").value);
  } catch (error) {
    status(error.message, "out");
  }
};
$("register").onclick = async () => {
  const r = await fetch("/auth/register", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ username: $("username").value, password: $("password").value }),
  });
  const body = await r.json().catch(() => ({}));
  status(r.ok ? "Registered: now log in." : body.error_description ?? `register: ${r.status}`, r.ok ? "" : "out");
};
$("call").onclick = me;
$("logout").onclick = () => auth.logout().catch((e) => status(e.message, "down"));
$("everywhere").onclick = () => auth.logoutEverywhere().catch((e) => status(e.message, "down"));

// Exposed for the browser tests (tests/browser): the calls a user's clicks make.
window.demo = { auth, me };

auth.restore().then(
  (resumed) => resumed || status("Not logged in.", "out"),
  () => status("The service is temporarily unavailable.", "down"),
);
