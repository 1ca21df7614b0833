/**
 * `npm run check -- [DIR] [--explain CONNECTION [--event FILE]]`: validates a pipelines directory
 * exactly as the node would load it — schema, ${VAR}s, JSONata that must compile, raw webhook
 * checks, JavaScript and Python transforms that must load, the Customer Model and the properties
 * each `mapping` writes (src/config/loader.ts, so the node refuses the same) — and exits
 * non-zero with file:line messages. `--explain` shows what each pipeline of a connection does to
 * an event: `--event FILE`, else the connection's last stored event (with NATS_URL), else a sample. Meant for CI before a deploy.
 */
import { readFileSync } from "node:fs";
import { lineInYaml, loadConfig, ConfigError, type Config } from "../src/config/loader.ts";
import { createTransform } from "../src/pipeline/transform/index.ts";
import { decide, filterOf, selectionOf, type Verdict } from "../src/event/selection.ts";
import { selectedBy } from "../src/pipeline/export/selected-by.ts";
import { ModelCheck } from "../src/pipeline/users/customer-model.ts";
import { DEDUP_SHARDS, streamLayout } from "../src/bus/subjects.ts";
import { nameCollisions } from "../src/pipeline/manager.ts";
import { fail, parseCommand, unknownName } from "./cli.ts";

const SAMPLE = {
  type: "identify",
  userId: "u1",
  messageId: "sample-1",
  timestamp: new Date().toISOString(),
  traits: { email: "Ada@Example.com", plan: "pro" },
};

const { values, positionals } = parseCommand({
  name: "check",
  usage: `usage: npm run check -- [DIR] [--explain CONNECTION [--event FILE]]

Validates a pipelines directory (default: $TRIBUTARY_PIPELINES or pipelines/) as the node would load it;
exits 1 with file:line messages.
      --explain CONNECTION  what each pipeline of CONNECTION does to a sample event (or the last stored one)
      --event FILE          explain with the event in FILE instead
  -h, --help                this help

The keys, types and allowed values of pipelines/ files: docs/configuration.md`,
  options: { explain: { type: "string" }, event: { type: "string" } },
  positionals: { max: 1 },
});
const dir = positionals[0] ?? process.env.TRIBUTARY_PIPELINES ?? "pipelines";

let config: Config;
try {
  config = loadConfig(dir);
} catch (e) {
  if (!(e instanceof ConfigError)) throw e;
  for (const p of e.problems) console.error(p);
  console.error(`\n${e.problems.length} problem${e.problems.length === 1 ? "" : "s"} in ${dir}`);
  process.exit(1);
}

const problems: string[] = [];
// Two pipelines sharing a durable consumer (or dead-letter subject) would split each other's events.
const lineOfPipeline = (file: string, index?: number) =>
  index === undefined ? 1 : lineInYaml(readFileSync(file, "utf8"), `/pipelines/${index}/name`);
for (const { a, b, what, name } of nameCollisions(config)) {
  problems.push(
    `${b.file}:${lineOfPipeline(b.file, b.index)}: pipeline "${b.pipeline}" of connection "${b.connection}" would share the ${what} ${name} with pipeline "${a.pipeline}" of connection "${a.connection}" in ${a.file}:${lineOfPipeline(a.file, a.index)}; rename one`,
  );
}

// What only running the code can tell: user JavaScript and Python must load.
const transforms = new Map<string, Awaited<ReturnType<typeof createTransform>>>();
for (const c of config.connections.values()) {
  for (const [i, p] of (c.pipelines ?? []).entries()) {
    if (!p.transform) continue;
    try {
      transforms.set(`${c.connection}/${p.name}`, await createTransform(p.transform));
    } catch (e) {
      const kind = Object.keys(p.transform)[0]!;
      const line = lineInYaml(readFileSync(c.file, "utf8"), `/pipelines/${i}/transform/${kind}`);
      problems.push(`${c.file}:${line}: pipelines/${i}/transform/${kind} of "${p.name}": ${(e as Error).message}`);
    }
  }
}
if (problems.length) {
  for (const p of problems) console.error(p);
  process.exit(1);
}

const pipelines = [...config.connections.values()].reduce((n, c) => n + (c.pipelines?.length ?? 0), 0);
console.log(
  `ok: ${config.connections.size} connection(s), ${pipelines} pipeline(s), ${Object.keys(config.customerModel).length} Customer Model propert(ies) in ${dir}`,
);

if (values.explain) {
  const c = config.connections.get(values.explain);
  if (!c) {
    fail("check", unknownName("connection", values.explain, config.connections.keys(), { where: dir }));
  }
  const event = values.event
    ? JSON.parse(readFileSync(values.event, "utf8"))
    : ((await lastLiveEvent(c.connection)) ?? SAMPLE);
  console.log(
    `\n${values.event ? "event" : event === SAMPLE ? "sample event (no NATS_URL, or no event stored yet)" : "last stored event"}: ${JSON.stringify(event)}`,
  );
  const model: ModelCheck = new ModelCheck(config.customerModel);
  for (const p of c.pipelines ?? []) {
    // The pipeline's own selection (src/event/selection.ts): its filter or the users preset, then its consents.
    const expr = filterOf(selectedBy(p));
    const kind = p.export ? `export: ${p.export} to ${p.destination?.type}` : `import: ${p.import}`;
    let line = `- ${p.name} (${kind}${p.enabled === false ? ", disabled" : ""}): `;
    let verdict: Verdict;
    try {
      verdict = decide(event, selectionOf(selectedBy(p)));
    } catch (e) {
      console.log(line + `filter fails: ${(e as Error).message}`);
      continue;
    }
    if (!verdict.keep) {
      console.log(line + (verdict.why === "filter" ? `filtered out by ${expr}` : `filtered out: ${verdict.reason}`));
      continue;
    }
    line += expr ? `kept by ${expr}` : "kept (no filter)";
    const t = transforms.get(`${c.connection}/${p.name}`);
    if (t) {
      const [r] = await t.transformBatch([event]);
      if (!r!.ok) line += `; transformation fails: ${r!.error}`;
      else if (p.export) line += `; sends ${JSON.stringify(r!.value ?? null)}`;
      else {
        try {
          model.assert(r!.value ?? {});
          line += `; users properties ${JSON.stringify(r!.value ?? {})}`;
        } catch (e) {
          line += `; output breaks the Customer Model: ${(e as Error).message}`;
        }
      }
    } else line += p.export ? "; sent as it is" : "; loaded into events";
    console.log(line);
  }
}
for (const t of transforms.values()) t.dispose();

/** The connection's newest stored event, when NATS_URL points at the bus. */
async function lastLiveEvent(connection: string): Promise<Record<string, unknown> | undefined> {
  if (!process.env.NATS_URL) return undefined;
  const { connect } = await import("@nats-io/transport-node");
  const { jetstreamManager } = await import("@nats-io/jetstream");
  const nc = await connect({ servers: process.env.NATS_URL.split(","), timeout: 3000 });
  try {
    const jsm = await jetstreamManager(nc);
    let newest: { time: number; event: Record<string, unknown> } | undefined;
    // The layout the deployment's streams have, as the other commands read it.
    const { existingPartitions } = await import("../src/bus/connection.ts");
    const layout = streamLayout(
      (await existingPartitions(jsm).catch(() => undefined)) ?? Number(process.env.TRIBUTARY_STREAM_PARTITIONS || 1),
    );
    for (let shard = 0; shard < DEDUP_SHARDS; shard++) {
      const subject = layout.subject(connection, shard);
      const m = await jsm.streams
        .getMessage(layout.streamOfSubject(subject), { last_by_subj: subject })
        .catch(() => null);
      if (!m) continue;
      const events = m.json<Record<string, unknown>[]>();
      const last = Array.isArray(events) ? events.at(-1) : undefined;
      if (last && (!newest || m.time.getTime() > newest.time)) newest = { time: m.time.getTime(), event: last };
    }
    return newest?.event;
  } finally {
    await nc.close();
  }
}
process.exit(0);
