// `bun run chaos [--seconds N] [--seed S] [--short] [--keep]`: the Jepsen-style chaos run (see
// test/harness/chaos-run.ts). Prints the fault schedule as it runs, then the table of answers per
// fault and the final check of every accepted messageId against `tributary.events FINAL`.
// Exits 1 if an accepted event is missing or stored twice.
import { parseArgs } from "node:util";
import { formatChaos, runChaos } from "../test/harness/chaos-run.ts";

const { values } = parseArgs({
  args: Bun.argv.slice(2),
  options: {
    seconds: { type: "string", default: "120" },
    seed: { type: "string" },
    short: { type: "boolean", default: false },
    keep: { type: "boolean", default: false },
    clients: { type: "string" },
    "stream-max-mib": { type: "string" },
  },
});

const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
const seconds = Number(values.seconds);
if (!Number.isFinite(seed) || !Number.isFinite(seconds) || seconds < 0) {
  console.error("usage: bun scripts/chaos.ts [--seconds N] [--seed S] [--short] [--keep]");
  process.exit(2);
}
process.env.LOG_LEVEL ??= "warn";
process.on("SIGINT", () => process.exit(130));

const result = await runChaos({
  seconds,
  seed,
  short: values.short,
  keep: values.keep,
  clients: values.clients ? Number(values.clients) : undefined,
  streamMaxBytes: values["stream-max-mib"] ? Number(values["stream-max-mib"]) * 1048576 : undefined,
  log: (line) => console.error(line),
});
console.log("");
console.log(formatChaos(result));
if (values.keep) console.log(`\nLogs kept in: ${result.dirs.join(" ")}`);
console.log(`\nReplay this schedule: bun run chaos --seconds ${seconds} --seed ${seed}`);
process.exit(result.ok ? 0 : 1);
