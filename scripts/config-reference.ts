/**
 * `npm run docs:config [-- --check]`: writes docs/configuration.md, the configuration reference,
 * from the TypeBox schemas that validate `pipelines/` (src/config/schema.ts: every key, type,
 * allowed value, default, description and example) and from the defaults the node reads its
 * environment with. The prose around the tables lives here, so the whole file is reproducible;
 * test/unit/config-reference.test.ts fails when the committed file differs from what this makes.
 * `--check` exits 1 instead of writing when the file is out of date.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseCommand } from "./cli.ts";
import type { TSchema } from "@sinclair/typebox";
import { stringify } from "yaml";
import { Connection, CustomerModelFile, Pipeline, PropertyType } from "../src/config/schema.ts";
import { defaults } from "../src/config/env.ts";
import { defaultSandboxOptions } from "../src/pipeline/transform/sandbox-isolation.ts";

export const REFERENCE_PATH = join(import.meta.dir, "../docs/configuration.md");

type S = TSchema & Record<string, any>;

/** Hand-written examples, published in the reference; the test loads them as the node would. */
export const EXAMPLES: Record<string, string> = {
  "website.yaml": `# One file per source connection.
connection: website
source: webhook                      # webhook | segment | rudderstack | raw
writeKeys: ["\${WEBSITE_WRITE_KEY}"]  # from the environment; a list rotates
allowedOrigins: ["https://www.example.com"]
ip: mask24
rateLimit: {eventsPerMinute: 6000, burst: 1000}
pipelines:
  - name: all-track-events
    import: events
    filter: type = "track"           # JSONata; absent keeps every event
  - name: users
    import: users
    consents: [analytics]
    transform:                       # exactly one of mapping, jsonata, javascript, python
      mapping:                       # Customer Model property -> JSONata
        email: $lowercase(traits.email)
        plan: traits.plan
`,
  "customer-model.yaml": `# The Customer Model: the typed columns of tributary.users.
customerModel:
  email: string
  plan: string
  age: int
  signed_up_at: datetime
# migrate: true                      # allow removing or retyping properties
`,
  "github.yaml": `# A raw webhook connection: POST /v1/webhooks/github
connection: github
source: raw
body: json
headers: all
check: github                        # a preset, {header, equals} or {hmac: {...}}
secret: "\${GITHUB_WEBHOOK_SECRET}"
dedup: {header: X-GitHub-Delivery}
table: github_events
`,
};

const MIB = 1024 * 1024;
const size = (n: number) =>
  n === 0 ? "0" : n % MIB === 0 ? `${n} (${n / MIB} MiB)` : n % 1024 === 0 ? `${n} (${n / 1024} KiB)` : String(n);
const sandbox = defaultSandboxOptions();

/** Every variable the node reads; defaults come from the code that reads them. */
export const ENVIRONMENT: [name: string, fallback: string, description: string][] = [
  ["PORT", String(defaults.port), "HTTP port of the node."],
  ["HOST", defaults.host, "Address the HTTP server listens on."],
  [
    "NATS_URL",
    "",
    "NATS server URL; a cluster's servers separated by commas (tried in turn). Unset: `npm start` runs a local `nats-server -js` on `NATS_PORT`, with its data under `TRIBUTARY_DATA`.",
  ],
  ["NATS_PORT", "4222", "Port of the local nats-server `npm start` runs when `NATS_URL` is unset."],
  [
    "CLICKHOUSE_URL",
    "",
    "ClickHouse HTTP URL; the replicas of a replicated setup separated by commas (tried in turn). Unset: `npm start` runs a local clickhouse-server on `CLICKHOUSE_HTTP_PORT`.",
  ],
  [
    "CLICKHOUSE_HTTP_PORT",
    "8123",
    "HTTP port of the local clickhouse-server `npm start` runs when `CLICKHOUSE_URL` is unset.",
  ],
  ["CLICKHOUSE_TCP_PORT", "9000", "Native-protocol port of that local clickhouse-server."],
  ["CLICKHOUSE_USER", defaults.clickhouseUser, "ClickHouse user."],
  ["CLICKHOUSE_PASSWORD", defaults.clickhousePassword, "ClickHouse password."],
  [
    "TRIBUTARY_CLICKHOUSE_CLUSTER",
    "",
    'A `remote_servers` cluster of one shard: tables are `Replicated*MergeTree`, created `ON CLUSTER` (the README\'s "Replicated ClickHouse").',
  ],
  ["TRIBUTARY_DATABASE", defaults.database, "ClickHouse database of the `events`, `users` and raw webhook tables."],
  ["TRIBUTARY_PIPELINES", defaults.pipelinesDir, "The configuration directory this reference describes."],
  ["TRIBUTARY_DATA", defaults.dataDir, "Data directory of the local nats-server and clickhouse-server."],
  [
    "TRUST_PROXY",
    String(defaults.trustProxy),
    "`1`, `true`, `yes` or `on`: the client address is the first `X-Forwarded-For` hop, not the socket's. Only behind a proxy you trust.",
  ],
  [
    "TRIBUTARY_ADMIN_TOKEN",
    "",
    "Bearer token of the admin API and the Event debugger. Unset: both are off (but see `TRIBUTARY_DEV_ADMIN`).",
  ],
  [
    "TRIBUTARY_DEV_ADMIN",
    String(defaults.devAdmin),
    "Without an admin token, open the admin API and the debugger to loopback callers only (development).",
  ],
  [
    "TRIBUTARY_MAX_REQUEST_BYTES",
    size(defaults.maxRequestBytes),
    "Largest request body after decompression; larger is 413.",
  ],
  [
    "TRIBUTARY_MAX_EVENT_BYTES",
    size(defaults.maxEventBytes),
    "Largest event as JSON; a larger one is rejected on its own, the rest of the batch kept.",
  ],
  ["TRIBUTARY_MAX_EVENTS_PER_REQUEST", String(defaults.maxEventsPerRequest), "Most events in one request."],
  [
    "TRIBUTARY_MAX_IN_FLIGHT_BYTES",
    size(defaults.maxInFlightBytes),
    "Decompressed request bytes being worked on at once; beyond it requests get 429.",
  ],
  [
    "TRIBUTARY_PUBLISH_TIMEOUT_MS",
    String(defaults.publishTimeoutMs),
    "How long to wait for JetStream to acknowledge before answering 503.",
  ],
  [
    "TRIBUTARY_STREAM_MAX_AGE_HOURS",
    String(defaults.streamMaxAgeHours),
    "How long the events stream keeps events: what `replay` can reach.",
  ],
  [
    "TRIBUTARY_STREAM_MAX_BYTES",
    String(defaults.streamMaxBytes),
    "Storage the events stream may use; near it the node answers 503 rather than push out events a pipeline has not loaded. 0: no limit.",
  ],
  [
    "TRIBUTARY_STREAM_REPLICAS",
    String(defaults.streamReplicas),
    "JetStream replicas of the streams (with a NATS cluster).",
  ],
  [
    "TRIBUTARY_DEDUP_WINDOW_HOURS",
    String(defaults.dedupWindowHours),
    "How long a `messageId` is remembered per connection, so a retried event is stored once.",
  ],
  [
    "TRIBUTARY_BATCH_MAX_ROWS",
    String(defaults.batchMaxRows),
    "A pipeline's batch goes to ClickHouse at this many rows…",
  ],
  ["TRIBUTARY_BATCH_MAX_BYTES", size(defaults.batchMaxBytes), "…or this many bytes…"],
  ["TRIBUTARY_BATCH_MAX_AGE_MS", String(defaults.batchMaxAgeMs), "…or this age, whichever comes first."],
  [
    "TRIBUTARY_ACK_WAIT_MS",
    String(defaults.ackWaitMs),
    "JetStream redelivers what a pipeline read but did not acknowledge (a node that died) after this.",
  ],
  [
    "TRIBUTARY_EXPRESSION_TIMEOUT_MS",
    String(defaults.expressionTimeoutMs),
    "Time limit of each JSONata evaluation (filters, `mapping`, `jsonata`, `events:`, `dedup: {jsonata}`) per event; past it that event fails with `D1012`.",
  ],
  [
    "TRIBUTARY_TRANSFORM_TIMEOUT_MS",
    String(sandbox.limits.timeoutMs),
    "Time limit of a JavaScript or Python transform per event.",
  ],
  [
    "TRIBUTARY_TRANSFORM_MEMORY_MB",
    String(sandbox.limits.memoryBytes / MIB),
    "Interpreter heap of a JavaScript or Python sandbox, in MiB.",
  ],
  [
    "TRIBUTARY_SANDBOX_CPU_SECONDS",
    String(sandbox.cpuSeconds),
    "CPU time of one sandbox process; it is replaced at 90 %.",
  ],
  ["TRIBUTARY_SANDBOX_UID", String(sandbox.uid), "User id sandbox processes run as when the node runs as root."],
  ["TRIBUTARY_SANDBOX_GID", String(sandbox.gid), "Group id sandbox processes run as when the node runs as root."],
  ["LOG_LEVEL", "info", "`debug`, `info`, `warn` or `error`."],
  [
    "LOG_FORMAT",
    "",
    "`json` (one JSON object per line) or `pretty` (one short line per record). Unset: pretty when stderr is a terminal, JSON otherwise.",
  ],
  ["NO_COLOR", "", "Set to anything: no colours in terminal logs."],
];

const cell = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");
/** A value as it is written in YAML (flow style for lists and maps). */
const code = (v: unknown) => `\`${typeof v === "string" ? v : flow(v)}\``;
const flow = (v: unknown) =>
  stringify(v, { collectionStyle: "flow", lineWidth: 0 })
    .trim()
    .replace(/^([[{]) (.*) ([\]}])$/, "$1$2$3");
const isLiteral = (s: S) => "const" in s;
const isObject = (s: S) => s.type === "object" && !!s.properties;

/** What a key holds, in words. */
function typeOf(s: S): string {
  if (isLiteral(s)) return code(s.const);
  if (Array.isArray(s.anyOf))
    return (s.anyOf as S[])
      .map((b) => (isObject(b) ? `{${Object.keys(b.properties).join(", ")}}` : typeOf(b)))
      .join(" | ");
  switch (s.type) {
    case "string":
      return s.pattern ? `string matching ${code(s.pattern)}` : s.minLength ? "non-empty string" : "string";
    case "number":
    case "integer":
      return `${s.type}${s.exclusiveMinimum !== undefined ? ` > ${s.exclusiveMinimum}` : s.minimum !== undefined ? ` ≥ ${s.minimum}` : ""}`;
    case "boolean":
      return "boolean";
    case "array":
      return `list of ${typeOf(s.items)}${s.minItems ? ` (at least ${s.minItems})` : ""}`;
    case "object":
      if (s.patternProperties) {
        const [pattern, value] = Object.entries(s.patternProperties)[0] as [string, S];
        const to = value === PropertyType ? "[property type](#property-types)" : typeOf(value);
        return `map: ${pattern === "^(.*)$" ? "name" : `name matching ${code(pattern)}`} → ${to}`;
      }
      return "object";
  }
  return "any";
}

/** The description, then each allowed value's meaning and an example. */
function describe(s: S): string {
  const parts = [s.description ?? ""];
  const literals = ((s.anyOf as S[] | undefined) ?? []).filter((b) => isLiteral(b) && b.description);
  for (const l of literals) parts.push(`${code(l.const)}: ${l.description}`);
  if (Array.isArray(s.examples)) parts.push(`Example: ${s.examples.map(code).join(", ")}`);
  return parts.filter(Boolean).join("<br>");
}

interface Row {
  key: string;
  schema: S;
  required: boolean;
}

/** The rows of an object's keys, nested objects and object forms of a union as dotted keys. */
function rows(object: S, prefix = "", stop: string[] = []): Row[] {
  const out: Row[] = [];
  for (const [name, child] of Object.entries(object.properties as Record<string, S>)) {
    const key = prefix + name;
    out.push({ key, schema: child, required: (object.required ?? []).includes(name) });
    if (stop.includes(key)) continue;
    if (isObject(child)) out.push(...rows(child, `${key}.`));
    for (const branch of (child.anyOf as S[] | undefined) ?? [])
      if (isObject(branch)) out.push(...rows(branch, `${key}.`));
  }
  return out;
}

function table(list: Row[]): string {
  const lines = ["| key | type | required | default | description |", "| --- | --- | --- | --- | --- |"];
  for (const r of list) {
    const fallback = r.schema.default === undefined ? "" : code(r.schema.default);
    lines.push(
      `| ${cell(`\`${r.key}\``)} | ${cell(typeOf(r.schema))} | ${r.required ? "yes" : ""} | ${cell(fallback)} | ${cell(describe(r.schema))} |`,
    );
  }
  return lines.join("\n");
}

const yaml = (name: string) => `\`\`\`yaml\n# pipelines/${name}\n${EXAMPLES[name]!.trimEnd()}\n\`\`\``;

export function renderConfigReference(): string {
  const types = (PropertyType.anyOf as S[])
    .map((t) => `| ${code(t.const)} | ${cell(t.description ?? "")} |`)
    .join("\n");
  const env = ENVIRONMENT.map(([name, fallback, description]) => {
    const [value, note] = fallback.split(/ (?=\()/); // "16777216 (16 MiB)": the value, then what it means
    return `| \`${name}\` | ${fallback === "" ? "" : cell(code(value) + (note ? ` ${note}` : ""))} | ${cell(description)} |`;
  }).join("\n");
  return `<!-- Generated by \`npm run docs:config\` (scripts/config-reference.ts) from src/config/schema.ts and the node's defaults. Do not edit: change the schemas or the script, then regenerate. -->

# Configuration reference

A Tributary node is configured by the YAML files of one directory, \`pipelines/\` (or
\`TRIBUTARY_PIPELINES\`), and by [environment variables](#environment-variables).

- Each \`*.yaml\` / \`*.yml\` file is either a **connection file** (it has \`connection:\`): one
  source of events, its write keys and its [pipelines](#pipelines) into ClickHouse; or a
  **Customer Model file** (it has \`customerModel:\`): the typed properties of the \`users\` table.
- \`\${VAR}\` in a value is replaced from the environment, and \`\${VAR:-default}\` gives a default. A
  missing variable is an error naming file and line. Put write keys and secrets there, not in the file.
- A change on disk is picked up without a restart. A broken change is logged, and the last good
  configuration keeps running.
- \`npm run check [DIR]\` validates a directory exactly as the node loads it and exits 1 with
  \`file:line\` messages: a value that is not allowed lists the allowed ones, an unknown key names the
  closest known one, and a \`mapping\` onto a property the Customer Model lacks is an error.
- Unknown keys are errors everywhere: a typo never passes silently.

This file is generated from the schemas the node validates with (\`src/config/schema.ts\`) by
\`npm run docs:config\`; a test fails when it is out of date.

## Example

${yaml("website.yaml")}

${yaml("customer-model.yaml")}

${yaml("github.yaml")}

## Connection files

Keys written \`a.b\` are keys of the object under \`a\` (for a key that takes one of several forms,
such as \`check\`, of that form); "required" is within that object. A key marked \`source: raw\` only
is for raw webhook connections (\`POST /v1/webhooks/<connection>\`), which take no write keys.

${table(rows(Connection as S, "", ["pipelines"]))}

## Pipelines

Each entry of a connection's \`pipelines\` list reads the connection's events from NATS JetStream
(one durable consumer per pipeline, shared by every node) and loads what it keeps into ClickHouse.
A message is acknowledged only after ClickHouse confirmed the insert.

${table(rows(Pipeline as S))}

## Customer Model files

The Customer Model is the \`users\` table's typed properties. A \`mapping\` may only write these
properties, and every transformation's output is checked against them.

${table(rows(CustomerModelFile as S))}

### Property types

| type | meaning and column |
| --- | --- |
${types}

## Environment variables

An empty default means unset. A value the node cannot use (a number that is not one, a negative
size, a time limit of 0) stops it at start-up.

| variable | default | meaning |
| --- | --- | --- |
${env}
`;
}

if (import.meta.main) {
  const { values } = parseCommand({
    name: "docs:config",
    usage:
      "usage: npm run docs:config [-- --check]\n\nWrites docs/configuration.md from src/config/schema.ts and the node's defaults.\n      --check   write nothing; exit 1 when the file is out of date\n  -h, --help    this help",
    options: { check: { type: "boolean" } },
  });
  const text = renderConfigReference();
  let current = "";
  try {
    current = readFileSync(REFERENCE_PATH, "utf8");
  } catch {}
  if (values.check) {
    if (current !== text) {
      console.error("docs/configuration.md is out of date: run `npm run docs:config`");
      process.exit(1);
    }
    console.log("docs/configuration.md is up to date");
  } else {
    writeFileSync(REFERENCE_PATH, text);
    console.log(current === text ? "docs/configuration.md unchanged" : "wrote docs/configuration.md");
  }
}
