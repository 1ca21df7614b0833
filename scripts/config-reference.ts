/**
 * `npm run docs:config [-- --check]`: writes docs/configuration.md, the configuration reference,
 * from the TypeBox schemas that validate `pipelines/` (src/config/schema.ts: every key, type,
 * allowed value, default, description and example) and the environment (src/config/env.ts). The prose around the tables lives here, so the whole file is reproducible;
 * test/unit/config-reference.test.ts fails when the committed file differs from what this makes.
 * `--check` exits 1 instead of writing when the file is out of date.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseCommand } from "./cli.ts";
import type { TSchema } from "@sinclair/typebox";
import { stringify } from "yaml";
import { Connection, CustomerModelFile, Pipeline, PropertyType } from "../src/config/schema.ts";
import { Environment, expectedText } from "../src/config/env.ts";

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

/** Every variable the node reads, from the schema it validates them with (src/config/env.ts). */
export const ENVIRONMENT: [name: string, type: string, fallback: string, description: string][] = Object.entries(
  Environment.properties as Record<string, S>,
).map(([name, s]) => [
  name,
  expectedText(s),
  s.default === undefined ? "" : s.unit === "bytes" ? size(s.default) : String(s.default),
  s.description ?? "",
]);

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
  const env = ENVIRONMENT.map(([name, type, fallback, description]) => {
    const [value, note] = fallback.split(/ (?=\()/); // "16777216 (16 MiB)": the value, then what it means
    return `| \`${name}\` | ${cell(type)} | ${fallback === "" ? "" : cell(code(value) + (note ? ` ${note}` : ""))} | ${cell(description)} |`;
  }).join("\n");
  return `<!-- Generated by \`npm run docs:config\` (scripts/config-reference.ts) from src/config/schema.ts and src/config/env.ts. Do not edit: change the schemas or the script, then regenerate. -->

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

Generated from the schema the node validates its environment with (\`src/config/env.ts\`). An
empty default means unset; an empty value counts as unset too, except for a text with a default.
A value outside what the variable takes stops the node at start-up with a message naming the
variable, such as \`TRIBUTARY_STREAM_REPLICAS: expected an integer 1–5, got "2.5"\`.

| variable | takes | default | meaning |
| --- | --- | --- | --- |
${env}
`;
}

if (import.meta.main) {
  const { values } = parseCommand({
    name: "docs:config",
    usage:
      "usage: npm run docs:config [-- --check]\n\nWrites docs/configuration.md from src/config/schema.ts and src/config/env.ts.\n      --check   write nothing; exit 1 when the file is out of date\n  -h, --help    this help",
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
