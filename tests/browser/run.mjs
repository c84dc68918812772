// The browser package and the demo page in a real browser (headless Chromium from
// Debian's package, driven by playwright-core; no browser download), against the real
// stack the calling test started (tests/tests/browser.rs). Prints one JSON line of
// results the test asserts; exits non-zero on the first failed check.
//
//   node tests/browser/run.mjs EDGE_URL ORIGIN_PID SCREENSHOT_DIR
import { chromium } from "playwright-core";
import { createServer } from "node:http";

const [edge, originPid, shots] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const results = {};
const check = (ok, what) => {
  if (!ok) {
    console.error(`browser check failed: ${what}`);
    process.exitCode = 1;
    throw new Error(what);
  }
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const user = `browser-${Date.now().toString(36)}`;
  const password = "correct horse battery staple";
  await page.goto(`${edge}/`);
  await page.fill("#username", user);
  await page.fill("#password", password);
  await page.click("#register");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("Registered"));
  await page.click("#login");
  await page.waitForFunction((u) => document.querySelector("#status").textContent.includes(u), user);
  await page.waitForSelector("#sessions tr");
  if (shots) await page.screenshot({ path: `${shots}/demo-logged-in.png`, fullPage: true });

  // 1. The page shows the user; the refresh token is in no storage and not in document.cookie.
  const exposed = await page.evaluate(() => ({
    cookie: document.cookie,
    local: JSON.stringify(localStorage),
    session: JSON.stringify(sessionStorage),
  }));
  const cookies = await context.cookies();
  const refresh = cookies.find((c) => c.name === "refresh_token");
  check(refresh?.httpOnly && refresh.secure && refresh.sameSite === "Strict" && refresh.path === "/auth", `the refresh cookie is locked down: ${JSON.stringify(refresh)}`);
  check(!exposed.cookie.includes(refresh.value) && !exposed.local.includes(refresh.value) && !exposed.session.includes(refresh.value), "the refresh token is readable by the page");
  results.login = { user, documentCookie: exposed.cookie, storage: exposed.local + exposed.session };

  // 2. Three tabs calling the API every 500 ms for 40 s, tokens living 10 s.
  const tabs = [page, await context.newPage(), await context.newPage()];
  for (const tab of tabs.slice(1)) {
    await tab.goto(`${edge}/`);
    await tab.waitForFunction((u) => document.querySelector("#status").textContent.includes(u), user);
  }
  for (const tab of tabs) {
    await tab.evaluate(() => {
      window.calls = { ok: 0, failed: [] };
      window.refreshes = 0;
      window.demo.auth.addEventListener("refresh", () => window.refreshes++);
      window.loop = setInterval(async () => {
        const status = await window.demo.me();
        if (status === 200) window.calls.ok++;
        else window.calls.failed.push(status);
      }, 500);
    });
  }
  const seconds = Number(process.env.BROWSER_LOAD_SECS ?? 40);
  await sleep(seconds * 1000);
  const load = [];
  for (const tab of tabs) load.push(await tab.evaluate(() => ({ ...window.calls, refreshes: window.refreshes })));
  results.load = { seconds, tabs: load, refreshes: load.reduce((n, t) => n + t.refreshes, 0) };
  check(load.every((t) => t.failed.length === 0 && t.ok > 0), `calls failed under load: ${JSON.stringify(load)}`);

  // 3. The origin stopped (SIGSTOP) for 5 s: no tab logs out; calls resume within 5 s.
  process.kill(Number(originPid), "SIGSTOP");
  const stoppedAt = Date.now();
  await sleep(5000);
  process.kill(Number(originPid), "SIGCONT");
  const continuedAt = Date.now();
  for (const tab of tabs) await tab.evaluate(() => { window.calls = { ok: 0, failed: [] }; });
  let resumedAfter = null;
  while (Date.now() - continuedAt < 10_000) {
    const states = [];
    for (const tab of tabs) states.push(await tab.evaluate(() => ({ ok: window.calls.ok, loggedIn: window.demo.auth.loggedIn })));
    check(states.every((s) => s.loggedIn), "a tab logged out while the origin was stopped");
    if (states.every((s) => s.ok > 0)) {
      resumedAfter = Date.now() - continuedAt;
      break;
    }
    await sleep(100);
  }
  results.outage = { stoppedMs: continuedAt - stoppedAt, resumedAfterMs: resumedAfter };
  check(resumedAfter !== null && resumedAfter <= 5000, `calls did not resume within 5 s: ${resumedAfter}`);
  for (const tab of tabs) await tab.evaluate(() => clearInterval(window.loop));

  // 4. A page of another origin on this host (another port: the same site, so
  // SameSite does not hold the cookie back) posting to /auth/refresh with credentials.
  const evil = createServer((_, res) => {
    res.setHeader("content-type", "text/html");
    res.end("<!doctype html><title>elsewhere</title>");
  });
  await new Promise((r) => evil.listen(0, "127.0.0.1", r));
  const other = await context.newPage();
  await other.goto(`http://127.0.0.1:${evil.address().port}/`);
  const cross = await other.evaluate(async (edge) => {
    const out = {};
    for (const [name, headers] of [["with the header", { "x-token-delivery": "cookie" }], ["plain", {}]]) {
      try {
        const r = await fetch(`${edge}/auth/refresh`, { method: "POST", credentials: "include", headers });
        out[name] = r.status;
      } catch (e) {
        out[name] = `refused by the browser (${e.name})`;
      }
    }
    return out;
  }, edge);
  evil.close();
  results.crossOrigin = cross;
  check(Object.values(cross).every((v) => v === 403 || String(v).startsWith("refused")), `another origin got through: ${JSON.stringify(cross)}`);

  // 5. "Log out everywhere" in one tab: the other tabs show logged out by their next call.
  await tabs[0].click("#everywhere");
  await tabs[0].waitForFunction(() => document.querySelector("#status").textContent.startsWith("Logged out"), null, { timeout: 5000 });
  for (const tab of tabs) {
    await tab.evaluate(() => window.demo.me());
    await tab.waitForFunction(() => document.querySelector("#status").textContent.startsWith("Logged out"), null, { timeout: 5000 });
  }
  if (shots) await tabs[1].screenshot({ path: `${shots}/demo-logged-out.png`, fullPage: true });
  results.logoutEverywhere = "every tab shows logged out";
} finally {
  await browser.close();
  console.log(JSON.stringify(results));
}
