/**
 * What every command (`npm run <command> -- …`) shares: `--help` prints the usage on stdout and
 * exits 0 before anything starts; an unknown flag, a missing value or a wrong number of arguments
 * prints the problem and the usage on stderr and exits 2; an unknown name says which names exist
 * and the closest one. Light (node:util and the configuration's own "did you mean"), so a benchmark
 * parses its flags before it starts anything.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { closest } from "../src/config/suggest.ts";

export { closest };

/** Exit codes: 1 the command ran and failed (or a name it was given does not exist), 2 it was called wrongly. */
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

type Options = NonNullable<ParseArgsConfig["options"]>;

export interface CommandSpec<O extends Options> {
  /** As typed after `npm run`, e.g. "tail" or "bench:ingest". */
  name: string;
  /** The whole help text; its first line is `usage: npm run <name> -- …`. */
  usage: string;
  options: O;
  /** How many positional arguments the command takes (default none). */
  positionals?: { min?: number; max?: number };
  argv?: string[];
}

/** Prints `<command>: <message>` on stderr and exits (1 by default: the command failed). */
export function fail(command: string, message: string, code = EXIT_FAILED): never {
  process.stderr.write(`${command}: ${message}\n`);
  process.exit(code);
}

/** A wrong call: the problem, then the usage lines (the help's first paragraph), on stderr; exit 2. */
export function usageError(spec: { name: string; usage: string }, message: string): never {
  const synopsis = spec.usage.split(/\n\s*\n/)[0];
  fail(spec.name, `${message}\n${synopsis}\n(--help for more)`, EXIT_USAGE);
}

/**
 * Parses the command line strictly (an unknown flag is an error, never ignored). `--help` / `-h`
 * prints the usage and exits 0 whatever else is on the line, so it never starts anything.
 */
export function parseCommand<O extends Options>(spec: CommandSpec<O>) {
  const argv = spec.argv ?? process.argv.slice(2);
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(`${spec.usage}\n`);
    process.exit(0);
  }
  const max = spec.positionals?.max ?? 0;
  const min = spec.positionals?.min ?? 0;
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: spec.options, allowPositionals: max > 0, strict: true });
  } catch (e) {
    usageError(spec, flagProblem(e as Error & { code?: string }, Object.keys(spec.options)));
  }
  const n = parsed.positionals.length;
  if (n < min)
    usageError(spec, min === 1 && max === 1 ? "one argument is needed" : `at least ${min} argument(s) needed`);
  if (n > max)
    usageError(
      spec,
      max === 0
        ? `unexpected argument "${parsed.positionals[0]}"`
        : `unexpected argument "${parsed.positionals[max]}" (at most ${max})`,
    );
  return parsed;
}

/** node:util's message, with the closest known flag when the flag is unknown. */
function flagProblem(e: Error & { code?: string }, known: string[]): string {
  const message = e.message.split("\n")[0]!.replace(/\. To specify a positional argument.*$/, "");
  if (e.code !== "ERR_PARSE_ARGS_UNKNOWN_OPTION") return message;
  const flag = /option '(-{1,2}[^'=]+)/.exec(e.message)?.[1];
  const near = flag ? closest(flag.replace(/^-+/, ""), [...known, "help"]) : undefined;
  return near ? `${message}; did you mean --${near}?` : message;
}

/**
 * `no connection "shpo". Did you mean "shop"? Known connections: billing, shop (looked in …).`;
 * `of` narrows the kind: `no pipeline "x" of connection "shop". … Known pipelines of connection "shop": …`.
 */
export function unknownName(
  kind: string,
  name: string,
  known: Iterable<string>,
  o: { of?: string; where?: string } = {},
): string {
  const list = [...new Set(known)].sort();
  const near = closest(name, list);
  const of = o.of ? ` ${o.of}` : "";
  const knownText = list.length ? `known ${kind}s${of}: ${list.join(", ")}` : `no ${kind}s${of} are known`;
  return `no ${kind} "${name}"${of}.${near ? ` Did you mean "${near}"?` : ""} ${knownText[0]!.toUpperCase()}${knownText.slice(1)}${o.where ? ` (${o.where})` : ""}.`;
}
