import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { useStack } from "../harness/stack.ts";
import { eventually, rows } from "../harness/warehouse.ts";
import { currentProfileQuery } from "../../src/pipeline/users/identities-table.ts";

/**
 * `npm run resolve` (issue 21) through the public path: profiles merged live by email and by
 * phone, then the Customer Model file's identifiers shortened and `scripts/resolve.ts` run (as
 * `npm run resolve` runs it): the profiles merged by the identifier that left split back, in
 * `users FINAL`, in `identities` and in the join from events to their current profile.
 */
const ROOT = join(import.meta.dir, "../..");
const model = (identifiers: string) =>
  `customerModel:\n  email: string\n  phone: string\n  plan: string\nidentifiers: ${identifiers}\n`;
const KEY = "key-identity-resolve-0001";
const stack = useStack({
  "customer-model.yaml": model("[email, phone]"),
  "shop.yaml": `connection: shop
source: webhook
writeKeys: ["${KEY}"]
pipelines:
  - name: events
    import: events
  - name: users
    import: users
    transform:
      mapping:
        email: traits.email
        phone: traits.phone
        plan: traits.plan
`,
});

let seq = 0;
const identify = (anonymousId: string, traits: Record<string, unknown>) => ({
  type: "identify",
  anonymousId,
  messageId: `res-${++seq}`,
  timestamp: new Date(Date.UTC(2026, 1, 1, 9, seq)).toISOString(),
  traits,
});
async function post(events: unknown[]) {
  const r = await fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ batch: events }),
  });
  expect(r.status).toBe(200);
}
const groups = async () =>
  (
    await rows<{ ids: string[] }>(
      stack.db,
      "SELECT arraySort(anonymous_ids) AS ids FROM tributary.users FINAL WHERE _deleted = 0 ORDER BY ids",
    )
  ).map((r) => r.ids.join(","));

async function resolve(identifiers: string) {
  writeFileSync(join(stack.node.config.options.dir, "customer-model.yaml"), model(identifiers));
  const p = Bun.spawn([process.execPath, join(ROOT, "scripts/resolve.ts")], {
    cwd: ROOT,
    env: {
      ...process.env,
      NATS_URL: stack.nats.url,
      CLICKHOUSE_URL: stack.ch.url,
      TRIBUTARY_DATABASE: "tributary",
      TRIBUTARY_PIPELINES: stack.node.config.options.dir,
      LOG_LEVEL: "error",
    },
    stdout: "pipe",
    stderr: "pipe",
    timeout: 60_000,
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  expect({ code: await p.exited, err }).toEqual({ code: 0, err: "" });
  return JSON.parse(out.trim().split("\n").at(-1)!);
}

test("merge live, then resolve with fewer identifiers: the profiles split back, and events follow them", async () => {
  await post([identify("r-a1", { email: "x@example.com", plan: "free" })]);
  await post([identify("r-a3", { phone: "+100" })]);
  await eventually(stack.db, "SELECT 1 FROM tributary.users FINAL", (r) => r.length === 2);
  await post([identify("r-a2", { email: "x@example.com", plan: "pro" })]);
  await post([identify("r-a4", { email: "y@example.com", phone: "+100" })]);
  await eventually(stack.db, "SELECT count() AS n FROM tributary.identities FINAL", (r: any[]) => Number(r[0].n) === 4);
  let merged = await groups();
  for (let i = 0; i < 100 && merged.join(" ") !== "r-a1,r-a2 r-a3,r-a4"; i++) {
    await Bun.sleep(200);
    merged = await groups();
  }
  expect(merged).toEqual(["r-a1,r-a2", "r-a3,r-a4"]);

  const phoneGone = await resolve("[email]");
  expect(phoneGone).toMatchObject({
    identifiers: ["email"],
    identities: 4,
    profiles: 3,
    profilesBefore: 2,
    refused: [],
  });
  expect(await groups()).toEqual(["r-a1,r-a2", "r-a3", "r-a4"]);
  // Each event's current profile follows: r-a3 and r-a4 now lead to two profiles.
  const joined = await rows<any>(
    stack.db,
    currentProfileQuery("tributary", "anonymous_id IN ('r-a1','r-a2','r-a3','r-a4')") + " ORDER BY message_id",
  );
  const byAnon = new Map<string, string>();
  const events = await rows<any>(stack.db, "SELECT message_id, anonymous_id FROM tributary.events FINAL");
  for (const j of joined) byAnon.set(events.find((e) => e.message_id === j.message_id)!.anonymous_id, j.profile_id);
  expect(byAnon.get("r-a1")).toBe(byAnon.get("r-a2"));
  expect(byAnon.get("r-a3")).not.toBe(byAnon.get("r-a4"));
  const profiles = await rows<any>(stack.db, "SELECT profile_id FROM tributary.users FINAL");
  for (const id of byAnon.values()) expect(profiles.map((p) => p.profile_id)).toContain(id);

  // No identifiers at all: four anonymous profiles; back to [email, phone]: merged again.
  expect(await resolve("[]")).toMatchObject({ profiles: 4 });
  expect(await groups()).toEqual(["r-a1", "r-a2", "r-a3", "r-a4"]);
  expect(await resolve("[email, phone]")).toMatchObject({ profiles: 2 });
  expect(await groups()).toEqual(["r-a1,r-a2", "r-a3,r-a4"]);
  const plan = await rows<any>(stack.db, "SELECT plan FROM tributary.users FINAL WHERE has(anonymous_ids, 'r-a1')");
  expect(plan).toEqual([{ plan: "pro" }]);
}, 120_000);
