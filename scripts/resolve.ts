/**
 * `npm run resolve` rebuilds the profiles and the identity graph from the `identities` table under
 * the Customer Model file's current `identifiers` (PRODUCT.md §8), e.g. after the list changed.
 * Uses NATS_URL, CLICKHOUSE_URL, TRIBUTARY_PIPELINES and TRIBUTARY_DATABASE like the node.
 */
import { optionsFromEnv } from "../src/config/env.ts";
import { ConfigError, loadConfig } from "../src/config/loader.ts";
import { busOptionsOf, connectBus } from "../src/bus/connection.ts";
import { connectWarehouse, warehouseOptionsOf } from "../src/sink/clickhouse/server.ts";
import { rulesOf } from "../src/pipeline/users/identity-rules.ts";
import { resolveWarehouse } from "../src/pipeline/users/resolve-warehouse.ts";
import { fail, parseCommand } from "./cli.ts";

const USAGE = `usage: npm run resolve

Rebuilds every profile and the identity graph from the identities table, under the identifiers
the Customer Model file lists now: afterwards profiles are what a fresh ingestion of the same
events under these rules gives (README "Identity resolution"). Profiles get new ids; users,
profile_map and identities are rewritten. Disable the users pipelines first (enabled: false) and
enable them again after: they resume where they stopped. Prints one JSON line with the counts.

  -h, --help   this help

Environment: NATS_URL, CLICKHOUSE_URL, CLICKHOUSE_USER, CLICKHOUSE_PASSWORD, TRIBUTARY_CLICKHOUSE_CLUSTER,
TRIBUTARY_DATABASE, TRIBUTARY_PIPELINES, TRIBUTARY_STREAM_REPLICAS,
as for the node.`;

parseCommand({ name: "resolve", usage: USAGE, options: {} });
const o = optionsFromEnv();
let config: ReturnType<typeof loadConfig>;
try {
  config = loadConfig(o.pipelinesDir);
} catch (e) {
  if (e instanceof ConfigError) fail("resolve", e.message);
  throw e;
}
if (!Object.keys(config.customerModel).length) fail("resolve", "the configuration has no Customer Model");
const bus = await connectBus(busOptionsOf(o, "tributary-resolve", { adoptLayout: true }));
const warehouse = await connectWarehouse(warehouseOptionsOf(o));
try {
  const rules = rulesOf(config);
  const summary = await resolveWarehouse(warehouse, bus.js, bus.jsm, config.customerModel, rules, o.streamReplicas);
  console.log(JSON.stringify({ identifiers: rules.identifiers, mergeUserIds: rules.mergeUserIds, ...summary }));
} finally {
  await bus.close();
  await warehouse.close();
}
