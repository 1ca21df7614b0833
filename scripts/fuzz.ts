// `npm run fuzz`: the property-based tests of issue 7 (ingestion, config loader, key lookup), run
// far longer than CI runs them and with a random seed, which it prints first so that a failure can
// be replayed exactly. Same tests as CI, selected by the "property" in their names.
//
//   npm run fuzz                      # random seed, FUZZ_RUNS=10000 runs per property
//   FUZZ_RUNS=100000 npm run fuzz     # longer
//   FUZZ_SEED=1234 npm run fuzz       # replay a seed
//   npm run fuzz -- test/unit/fuzz-config.test.ts   # only some files
//
// CI runs the same properties with seed 42 and a few hundred runs each (test/harness/fuzz.ts).
import { parseCommand } from "./cli.ts";

const { positionals } = parseCommand({
  name: "fuzz",
  usage: `usage: npm run fuzz [-- TEST_FILE…]

Runs the property-based tests (ingestion, configuration loader, key lookup) far longer than CI
does, with a random seed printed first so that a failure can be replayed exactly.

  TEST_FILE…   only these test files (default: every file with properties)
  -h, --help   this help

Environment: FUZZ_RUNS (10000 runs per property), FUZZ_SEED (replay a seed), e.g.
  FUZZ_SEED=1234 FUZZ_RUNS=100000 npm run fuzz -- test/unit/fuzz-config.test.ts`,
  options: {},
  positionals: { max: Infinity },
});

const FILES = [
  "test/unit/fuzz-ingest.test.ts",
  "test/unit/fuzz-config.test.ts",
  "test/unit/auth-timing.test.ts",
  "test/integration/hostile.test.ts",
];

const seed = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : Math.floor(Math.random() * 2 ** 31);
const runs = process.env.FUZZ_RUNS ? Number(process.env.FUZZ_RUNS) : 10_000;
if (!Number.isInteger(seed) || !Number.isInteger(runs) || runs < 1) {
  console.error("FUZZ_SEED and FUZZ_RUNS must be integers (FUZZ_RUNS ≥ 1)");
  process.exit(2);
}
const files = positionals.length ? positionals : FILES;

console.log(
  `fuzz: FUZZ_SEED=${seed} FUZZ_RUNS=${runs} (replay: FUZZ_SEED=${seed} FUZZ_RUNS=${runs} npm run fuzz -- ${files.join(" ")})`,
);
const t0 = performance.now();
const proc = Bun.spawn([process.execPath, "test", "--timeout", String(24 * 3600_000), "-t", "property", ...files], {
  env: { ...process.env, FUZZ_SEED: String(seed), FUZZ_RUNS: String(runs) },
  stdio: ["inherit", "inherit", "inherit"],
});
const code = await proc.exited;
console.log(
  `fuzz: ${code === 0 ? "passed" : "FAILED"} in ${((performance.now() - t0) / 1000).toFixed(0)} s with FUZZ_SEED=${seed} FUZZ_RUNS=${runs}`,
);
process.exit(code);
