/**
 * `npm run forget -- <userId | anonymousId | email>` removes a user everywhere (PRODUCT.md §8);
 * `npm run forget -- --undo <id>` lifts the tombstones, so the user's new events are taken again.
 * Uses NATS_URL, CLICKHOUSE_URL, TRIBUTARY_PIPELINES and TRIBUTARY_DATABASE like the node.
 */
import { optionsFromEnv } from "../src/config/env.ts";
import { ConfigError, loadConfig } from "../src/config/loader.ts";
import { busOptionsOf, connectBus } from "../src/bus/connection.ts";
import { connectWarehouse, warehouseOptionsOf } from "../src/sink/clickhouse/server.ts";
import { type IdentityRules, rulesOf } from "../src/pipeline/users/identity-rules.ts";
import { ForgetError, forgetUser, unforgetUser } from "../src/pipeline/users/forget.ts";
import { fail, parseCommand } from "./cli.ts";

const USAGE = `usage: npm run forget -- <userId | anonymousId | email>
       npm run forget -- --undo <id>

Forgets a user: finds the profile the id leads to (a userId, an anonymousId, or the value of an
identifier such as an email), then removes the profile and those merged into it, its identities,
its KV entries, and its rows in users, identities, profile_map and events. Its userIds and
anonymousIds are kept as hashed tombstones: replays and late events do not bring it back, and
every pipeline drops (and counts as "forgotten") new events of those ids. Prints one JSON line
saying what was removed.

      --undo    lift the tombstones of the forget that covered <id> (nothing removed comes back;
                new events are taken again)
  -h, --help    this help

Environment: NATS_URL, CLICKHOUSE_URL, CLICKHOUSE_USER, CLICKHOUSE_PASSWORD, TRIBUTARY_CLICKHOUSE_CLUSTER,
TRIBUTARY_DATABASE, TRIBUTARY_PIPELINES, as for the node.`;

const { values, positionals } = parseCommand({
  name: "forget",
  usage: USAGE,
  options: { undo: { type: "boolean" } },
  positionals: { min: 1, max: 1 },
});
const id = positionals[0]!;
const o = optionsFromEnv();
const bus = await connectBus(busOptionsOf(o, "tributary-forget", { adoptLayout: true }));
try {
  if (values.undo) {
    const r = await unforgetUser(bus.js, id, o.streamReplicas);
    if (!r.tombstones) fail("forget", `no tombstone covers "${id}"`);
    console.log(JSON.stringify({ undone: true, ...r }));
  } else {
    let rules: IdentityRules;
    try {
      rules = rulesOf(loadConfig(o.pipelinesDir));
    } catch (e) {
      if (e instanceof ConfigError) fail("forget", e.message);
      throw e;
    }
    const warehouse = await connectWarehouse(warehouseOptionsOf(o));
    try {
      console.log(JSON.stringify(await forgetUser(warehouse, bus.js, id, rules, o.streamReplicas)));
    } catch (e) {
      if (e instanceof ForgetError) fail("forget", e.message);
      throw e;
    } finally {
      await warehouse.close();
    }
  }
} finally {
  await bus.close();
}
