// `npm run chaos -- [--seconds N] [--seed S] [--short] [--keep]`: the Jepsen-style chaos run (see
// test/harness/chaos-run.ts). Prints the fault schedule as it runs, then the table of answers per
// fault and the final check of every accepted messageId against `tributary.events FINAL`.
// Exits 1 if an accepted event is missing or stored twice.
import { parseCommand, usageError } from "./cli.ts";
import { formatChaos, runChaos } from "../test/harness/chaos-run.ts";

const spec = {
  name: "chaos",
  usage: `usage: npm run chaos -- [--seconds N] [--seed S] [--short] [--keep] [--clients N] [--stream-max-mib N]

The Jepsen-style chaos run: its own nats-server, clickhouse-server and nodes under load while
faults are injected (kills, pauses, a full stream); prints the fault schedule as it runs, then
the answers per fault and a check of every accepted messageId against tributary.events FINAL.
Exit 1 if an accepted event is missing or stored twice.

      --seconds N          length of the fault schedule (default 120; the first round, one fault
                           of each kind, always runs in full)
      --seed S             replay a schedule (default: random, printed at the end)
      --short              shorter faults and pauses (the run inside npm test)
      --keep               keep the services' and nodes' logs, and print where
      --clients N          concurrent senders
      --stream-max-mib N   TRIBUTARY_STREAM_MAX_BYTES of the nodes, in MiB
  -h, --help               this help`,
  options: {
    seconds: { type: "string", default: "120" },
    seed: { type: "string" },
    short: { type: "boolean", default: false },
    keep: { type: "boolean", default: false },
    clients: { type: "string" },
    "stream-max-mib": { type: "string" },
  },
} as const;
const { values } = parseCommand(spec);

const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
const seconds = Number(values.seconds);
if (!Number.isFinite(seed) || !Number.isFinite(seconds) || seconds < 0)
  usageError(spec, "--seconds and --seed take numbers");
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
console.log(`\nReplay this schedule: npm run chaos -- --seconds ${seconds} --seed ${seed}`);
process.exit(result.ok ? 0 : 1);
