// Drives the s2gw web UI in Debian's chromium, step by step with the Rust test
// (tests/e2e_web.rs): it reads commands on stdin and answers one line each on stdout.
//   node web.mjs URL SCREENSHOT_DIR
// Lines out: `ok <step> <detail>` or `fail <step> <reason>` (then it exits 1).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdtempSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const say = (line) => process.stdout.write(line + "\n");
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const next = async () => (await lines.next()).value ?? "quit";
// The page's own formatting of watts (app.js `W`).
const W = (w) => Math.abs(w) >= 1000 ? (w / 1000).toFixed(2) + " kW" : Math.round(w) + " W";

// A fresh profile every run (playwright passes it as --user-data-dir).
const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "s2gw-chromium-")), {
  executablePath: "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1100, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let step = "start";
try {
  const page = await browser.newPage();
  // Page weight: every response of the first load but the endless event stream.
  const sizes = new Map();
  page.on("response", async (r) => {
    if (r.url().includes("/api/events")) return;
    try { sizes.set(r.url(), (await r.body()).length); } catch { /* navigated away */ }
  });

  step = "overview";
  const devices = Number(await next());
  await page.goto(url);
  await page.waitForFunction((n) => {
    const rows = [...document.querySelectorAll("#devices tbody tr")];
    return rows.length === n && rows.every((r) => /\d/.test(r.querySelector(".power").textContent));
  }, devices, { timeout: 15000 });
  const weight = [...sizes.values()].reduce((a, b) => a + b, 0);
  await page.screenshot({ path: join(shots, "overview.png"), fullPage: true });
  const phone = await browser.newPage();
  await phone.setViewportSize({ width: 390, height: 844 });
  await phone.goto(url);
  await phone.waitForSelector("#devices tbody tr");
  await phone.screenshot({ path: join(shots, "overview-phone.png"), fullPage: true });
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await phone.close();
  say(`ok overview weight=${weight} phone_overflow=${overflow}`);

  // `expect ID WATTS`: the row of ID shows WATTS within 2 s.
  step = "live";
  const [, id, watts] = (await next()).split(" ");
  const want = W(Number(watts));
  const t0 = Date.now();
  await page.waitForFunction(([id, want]) =>
    document.querySelector(`#row-${id} .power`)?.textContent === want, [id, want], { timeout: 2000 });
  say(`ok live ${Date.now() - t0}ms ${want}`);

  // `toggle ID`: open the device page, switch CEM control off.
  step = "device";
  const [, dev] = (await next()).split(" ");
  await page.goto(`${url}#/device/${dev}`);
  await page.waitForSelector("#flex h3", { timeout: 5000 });
  await page.screenshot({ path: join(shots, "device.png"), fullPage: true });
  const box = page.locator(`input.control[data-id="${dev}"]`);
  if (!(await box.isChecked())) throw new Error("the CEM-control switch starts off");
  await box.click();
  say(`ok device toggled ${dev}`);

  // `refused ID`: the inspector shows the refused frame with its rule.
  step = "inspector";
  const [, res] = (await next()).split(" ");
  await page.goto(`${url}#/inspector/${res}`);
  const refused = page.locator("#traffic tr.refused").first();
  await refused.waitFor({ timeout: 5000 });
  const rule = (await refused.locator(".rule").textContent()).trim();
  if (!rule) throw new Error("the refused frame shows no rule");
  const ok = page.locator("#traffic tr.msg:not(.refused)").first();
  await ok.click();
  await page.waitForSelector("#traffic pre", { timeout: 5000 });
  const json = await page.locator("#traffic pre").first().textContent();
  JSON.parse(json);
  await page.screenshot({ path: join(shots, "inspector.png"), fullPage: true });
  say(`ok inspector ${rule}`);

  step = "config";
  await next();
  await page.goto(`${url}#/config`);
  await page.waitForSelector("main h2", { timeout: 5000 });
  const verdict = await page.locator("main .badge").first().textContent();
  await page.screenshot({ path: join(shots, "config.png"), fullPage: true });
  say(`ok config ${verdict}`);
} catch (e) {
  say(`fail ${step} ${String(e.message).split("\n")[0]}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
