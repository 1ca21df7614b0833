// `bun bench/screenshot-debugger.ts [out.png]`: makes the README's screenshot of the Event debugger
// (docs/debugger.png by default). It starts its own nats-server, clickhouse-server and a node with
// two connections, opens the page in Debian's chromium (playwright-core), sends a few events, opens
// one and waits until its pipelines' outcomes are shown, then takes the picture. It used to be a
// test that did nothing unless the file was missing; it asserts nothing about the page (that is
// test/browser/debugger.test.ts's job) and fails loudly if any step does not happen.
import { existsSync, mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startClickHouse, startNats, startTestNode, webhookConnection } from "../test/harness/services.ts";
import { parseCommand } from "../scripts/cli.ts";

const CHROMIUM = "/usr/bin/chromium";
const ADMIN = "admin-token-screenshot-0001";
const KEY = "key-screenshot-shop-0001";
const { positionals } = parseCommand({
  name: "screenshot-debugger",
  usage: `usage: bun bench/screenshot-debugger.ts [OUT.png]

Makes the README's screenshot of the Event debugger (docs/debugger.png by default) with its own
nats-server, clickhouse-server, a node and Debian's chromium.

  -h, --help   this help`,
  options: {},
  positionals: { max: 1 },
});
const out = resolve(positionals[0] ?? fileURLToPath(new URL("../docs/debugger.png", import.meta.url)));
if (!existsSync(CHROMIUM))
  throw new Error(`${CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)`);

const files = {
  "billing.yaml": webhookConnection("billing", ["key-screenshot-billing-0001"]),
  "shop.yaml": webhookConnection(
    "shop",
    [KEY],
    `pipelines:
  - name: all-events
    import: events
  - name: identifies
    import: events
    filter: type = "identify"
`,
  ),
};

const [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
const node = await startTestNode(nats.url, files, { clickhouseUrl: ch.url, adminToken: ADMIN, batchMaxAgeMs: 100 });
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  await node.pipelinesReady;
  const context = await browser.newContext({
    viewport: { width: 1360, height: 820 },
    colorScheme: "light",
    deviceScaleFactor: 1,
  });
  const page = await context.newPage();
  const post = async (events: Record<string, unknown>[]) => {
    const r = await fetch(`${node.url}/v1/batch`, {
      method: "POST",
      headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify({ batch: events }),
    });
    if (r.status !== 200) throw new Error(`POST /v1/batch answered ${r.status}: ${await r.text()}`);
  };
  const row = (messageId: string) => page.locator(`#rows tr[data-message-id="${messageId}"]`);
  const outcome = (pipeline: string) => page.locator(`#o-rows tr[data-pipeline="${pipeline}"]`);
  const wait = { timeout: 60_000 };

  await page.goto(`${node.url}/debugger`);
  await page.locator("#auth").waitFor({ state: "visible", ...wait });
  await page.fill("#token", ADMIN);
  await page.click("#auth-form button[type=submit]");
  await page.locator("#auth").waitFor({ state: "hidden", ...wait });
  await page.locator('#connection option[value="shop"]').waitFor({ state: "attached", ...wait });
  await page.selectOption("#connection", "shop");
  await page.locator("#status.live").waitFor(wait);

  const now = Date.now();
  const order = {
    type: "track",
    event: "Order Completed",
    userId: "u-1042",
    messageId: "msg-browser-order-1",
    properties: { orderId: "o-5531", revenue: 89.9, currency: "EUR", products: [{ sku: "tea-01", quantity: 2 }] },
    context: { library: { name: "analytics.js", version: "2.11.1" }, page: { path: "/checkout/done" } },
  };
  await post([order]);
  await row(order.messageId).waitFor(wait);
  await post([
    {
      type: "identify",
      userId: "u-1042",
      messageId: "msg-browser-identify-1",
      traits: { email: "ada@example.com", plan: "pro" },
      timestamp: new Date(now - 4000).toISOString(),
    },
    {
      type: "page",
      anonymousId: "a-77f3c1",
      name: "Pricing",
      messageId: "msg-browser-page-1",
      properties: { path: "/pricing" },
    },
    {
      type: "track",
      event: "Product Viewed",
      anonymousId: "a-77f3c1",
      messageId: "msg-browser-track-2",
      properties: { sku: "tea-01" },
    },
    {
      type: "track",
      event: "Signed Up",
      userId: "u-2001",
      messageId: "msg-browser-track-3",
      properties: { plan: "free" },
    },
  ]);
  await row("msg-browser-track-3").waitFor(wait);
  await row(order.messageId).click();
  await page.locator("#detail").waitFor({ state: "visible", ...wait });
  await outcome("all-events").and(page.locator('[data-outcome="loaded"]')).waitFor(wait);
  await outcome("identifies").and(page.locator('[data-outcome="filtered"]')).waitFor(wait);
  await page.mouse.move(0, 0);
  await Bun.sleep(1300); // let the "new row" highlight fade: this is a picture, not a check
  mkdirSync(dirname(out), { recursive: true });
  await page.screenshot({ path: out });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  await node.stop();
  await Promise.all([nats.cleanup(), ch.cleanup()]);
}
