/**
 * `bun run check [DIR] [--explain CONNECTION [--event FILE]]`: validates a pipelines directory
 * exactly as the node would load it — schema, ${VAR}s, JSONata that must compile, raw webhook
 * checks, JavaScript and Python transforms that must load, the Customer Model — and exits
 * non-zero with file:line messages. `--explain` shows what each pipeline of a connection does to
 * a sample event. Meant for CI before a deploy.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { lineInYaml, loadConfig, ConfigError, type Config } from "../src/config/loader.ts";
import { compileFilter } from "../src/pipeline/filter.ts";
import { createTransform } from "../src/pipeline/transform/index.ts";
import { DEFAULT_USERS_FILTER } from "../src/pipeline/users/users-stage.ts";
import { ModelCheck } from "../src/pipeline/users/customer-model.ts";

const { values, positionals } = parseArgs({
  args: process.argv.slice(2),
  allowPositionals: true,
  options: { explain: { type: "string" }, event: { type: "string" }, help: { type: "boolean", short: "h" } },
});
if (values.help) {
  console.log("usage: bun run check [DIR] [--explain CONNECTION [--event FILE]]");
  process.exit(0);
}
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

// What only running the code can tell: user JavaScript and Python must load.
const problems: string[] = [];
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
console.log(`ok: ${config.connections.size} connection(s), ${pipelines} pipeline(s), ${Object.keys(config.customerModel).length} Customer Model propert(ies) in ${dir}`);

if (values.explain) {
  const c = config.connections.get(values.explain);
  if (!c) {
    console.error(`no connection named "${values.explain}"`);
    process.exit(1);
  }
  const event = values.event
    ? JSON.parse(readFileSync(values.event, "utf8"))
    : { type: "identify", userId: "u1", messageId: "sample-1", timestamp: new Date().toISOString(), traits: { email: "Ada@Example.com", plan: "pro" } };
  console.log(`\nsample event: ${JSON.stringify(event)}`);
  const model: ModelCheck = new ModelCheck(config.customerModel);
  for (const p of c.pipelines ?? []) {
    const expr = p.filter ?? (p.import === "users" ? DEFAULT_USERS_FILTER : undefined);
    let line = `- ${p.name} (import: ${p.import}${p.enabled === false ? ", disabled" : ""}): `;
    let kept: boolean;
    try {
      kept = compileFilter(expr).test(event);
    } catch (e) {
      console.log(line + `filter fails: ${(e as Error).message}`);
      continue;
    }
    if (!kept) {
      console.log(line + `filtered out by ${expr}`);
      continue;
    }
    line += expr ? `kept by ${expr}` : "kept (no filter)";
    const t = transforms.get(`${c.connection}/${p.name}`);
    if (t) {
      const [r] = await t.transformBatch([event]);
      if (!r!.ok) line += `; transformation fails: ${r!.error}`;
      else {
        try {
          model.assert(r!.value ?? {});
          line += `; users properties ${JSON.stringify(r!.value ?? {})}`;
        } catch (e) {
          line += `; output breaks the Customer Model: ${(e as Error).message}`;
        }
      }
    } else line += "; loaded into events";
    console.log(line);
  }
}
for (const t of transforms.values()) t.dispose();
process.exit(0);
