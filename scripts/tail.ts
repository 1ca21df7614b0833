#!/usr/bin/env bun
/**
 * `npm run tail -- <connection> [--pipeline NAME] [--filter JSONATA] [--json]`: a connection's
 * events live in the terminal (PRODUCT.md §6), read straight from NATS rather than the HTTP API.
 * It is a plain (core NATS) subscription to `tributary.events.<connection>.*`, so it sees what
 * every node stores and takes nothing from the stream: each message is a JSON array of normalised
 * events (a raw webhook connection's deliveries are objects with a `raw` field).
 * `--raw SUBJECT` prints any subject's messages as they are (`nats sub` for those without the CLI).
 */
import { connect, type Msg, type NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { connectionSubjects, connectionWildcard } from "../src/bus/subjects.ts";
import { existingPartitions } from "../src/bus/connection.ts";
import { loadConfig } from "../src/config/loader.ts";
import {
  compileExpression,
  compileFilter,
  jsonataBoolean,
  type EventFilter,
  type Expression,
} from "../src/expr/index.ts";
import { KIND_HEADER, recordKind } from "../src/event/envelope.ts";
import { decide, selectionOf, type Selection } from "../src/event/selection.ts";
import { selectedBy } from "../src/pipeline/export/selected-by.ts";
import { EXIT_USAGE, fail as failWith, parseCommand, unknownName, usageError } from "./cli.ts";
import { configuredNames, storedNames } from "./cli-names.ts";
import { natsServers } from "./cli-nats.ts";

const USAGE = `usage: npm run tail -- <connection> [--pipeline NAME] [--filter JSONATA] [--json]
       npm run tail -- --raw SUBJECT [--json]

Prints a connection's events as they are stored, one line each (time, type, event or name,
userId or anonymousId, messageId), straight from NATS ($NATS_URL, default nats://127.0.0.1:4222).
A connection that is neither in $TRIBUTARY_PIPELINES (default ./pipelines) nor in the events
stream is an error.

  -p, --pipeline NAME    only events that pipeline's filter (and required consents) would keep;
                         the pipeline comes from $TRIBUTARY_PIPELINES (default ./pipelines)
  -f, --filter JSONATA   only events for which this JSONata expression is true,
                         e.g. --filter 'type = "track" and event = "Signed Up"'
      --raw SUBJECT      any NATS subject instead, wildcards allowed ('tributary.events.>',
                         'tributary.dlq.shop.*'): each message as it is, subject, headers, payload
      --json             one JSON document per line: whole events (or, with --raw, one
                         {"subject", "headers", "payload"} per message)
  -h, --help             this help

Ctrl-C stops. With npm, use -s to keep npm's banner out of --json output: npm run -s tail -- …`;

type Event = Record<string, unknown>;

// ---- formatting ----------------------------------------------------------------------------

const ANSI = {
  reset: "\x1b[0m",
  dim: "\x1b[2m",
  bold: "\x1b[1m",
  red: "\x1b[31m",
  green: "\x1b[32m",
  yellow: "\x1b[33m",
  blue: "\x1b[34m",
  magenta: "\x1b[35m",
  cyan: "\x1b[36m",
};
const TYPE_COLOUR: Record<string, string> = {
  track: ANSI.magenta,
  identify: ANSI.green,
  page: ANSI.yellow,
  screen: ANSI.yellow,
  group: ANSI.blue,
  alias: ANSI.blue,
  raw: ANSI.cyan,
};

const text = (v: unknown): string =>
  typeof v === "string"
    ? v
    : v === undefined || v === null
      ? ""
      : typeof v === "object"
        ? JSON.stringify(v)
        : String(v);
const pad = (n: number, w = 2) => String(n).padStart(w, "0");
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** `HH:MM:SS.mmm` of an ISO time, in local time (or the value itself when it is not a time). */
export function clock(iso: unknown, utc = false): string {
  const d = new Date(text(iso));
  if (!text(iso) || Number.isNaN(d.getTime())) return text(iso) || "--:--:--.---";
  return utc
    ? `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${pad(d.getUTCMilliseconds(), 3)}`
    : `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** What the line shows for an event: its type, its name (event, page name, groupId…), its user. */
export function describe(e: Event): { time: unknown; type: string; name: string; user: string } {
  if (isObject(e.raw)) {
    const rows = Array.isArray(e.raw.rows) ? (e.raw.rows as unknown[]) : [];
    const first = rows.length ? text(rows[0]).replace(/\s+/g, " ") : "";
    const preview = first.length > 80 ? `${first.slice(0, 79)}…` : first;
    return {
      time: e.raw.receivedAt,
      type: "raw",
      name: `${rows.length} row${rows.length === 1 ? "" : "s"}${preview ? ` ${preview}` : ""}`,
      user: "",
    };
  }
  const type = text(e.type) || "?";
  let name = "";
  if (type === "track") name = text(e.event);
  else if (type === "page" || type === "screen")
    name = text(e.name) || text(isObject(e.properties) ? e.properties.name : undefined);
  else if (type === "group") name = text(e.groupId);
  else if (type === "alias") name = `${text(e.previousId)} → ${text(e.userId)}`;
  else if (type === "identify" && isObject(e.traits)) name = text(e.traits.email) || text(e.traits.name);
  const user = text(e.userId) ? text(e.userId) : text(e.anonymousId) ? `anon:${text(e.anonymousId)}` : "";
  return { time: e.receivedAt ?? e.timestamp, type, name, user };
}

/** One compact line per event; coloured for terminals. */
export function formatLine(e: Event, o: { color?: boolean; utc?: boolean } = {}): string {
  const d = describe(e);
  const c = (code: string, s: string) => (o.color && s ? `${code}${s}${ANSI.reset}` : s);
  const cols = [
    c(ANSI.dim, clock(d.time, o.utc)),
    c(TYPE_COLOUR[d.type] ?? ANSI.bold, d.type.padEnd(8)),
    (d.name || "-").padEnd(24),
    (d.user || "-").padEnd(16),
    c(ANSI.dim, text(e.messageId) || "-"),
  ];
  return cols.join("  ").replace(/\s+$/, "");
}

/** The events of one NATS message body: a JSON array of events, or one object (a raw delivery). */
export function eventsOf(body: string): Event[] {
  const v: unknown = JSON.parse(body);
  const list = Array.isArray(v) ? v : [v];
  return list.filter(isObject);
}

// ---- selection -----------------------------------------------------------------------------

export interface Selector {
  /** True to show the event; throws when an expression fails at run time. */
  (e: Event): boolean;
}

/** A pipeline's selection as the pipeline makes it (src/event/selection.ts), or its parts. */
export type PipelineSelection = Selection | { filter?: Expression | EventFilter; consents?: string[] };

const asFilter = (f: Expression | EventFilter | undefined): EventFilter =>
  f === undefined
    ? compileFilter(undefined)
    : "test" in f
      ? f
      : { source: f.source, test: (e) => jsonataBoolean(f.evaluate(e)) };

/** `--filter` and `--pipeline`: the pipeline decides exactly as it does when it runs (its filter or preset, then its consents). */
export function makeSelector(filter?: Expression, pipeline?: PipelineSelection): Selector {
  const sel: Selection | undefined = pipeline && {
    filter: asFilter(pipeline.filter),
    consents: pipeline.consents,
    takes: "takes" in pipeline ? pipeline.takes : "events",
  };
  return (e) => {
    if (sel && !decide(e, sel).keep) return false;
    if (filter && !jsonataBoolean(filter.evaluate(e))) return false;
    return true;
  };
}

// ---- raw messages (--raw) ---------------------------------------------------------------

/** Why a subject cannot be subscribed to: tokens separated by dots, none empty, `>` only last. */
export function subjectProblem(subject: string): string | undefined {
  if (!subject || /\s/.test(subject)) return `"${subject}" is not a NATS subject (no spaces, not empty)`;
  const tokens = subject.split(".");
  if (tokens.some((t) => t === "")) return `"${subject}" is not a NATS subject (an empty token between dots)`;
  if (tokens.slice(0, -1).includes(">"))
    return `"${subject}": ">" matches the rest of a subject, so it can only be its last token`;
  return undefined;
}

export interface RawMessage {
  subject: string;
  reply?: string;
  headers?: Record<string, string[]>;
  size: number;
  /** The payload as text, when it is UTF-8; otherwise `payloadBase64`. */
  payload?: string;
  payloadBase64?: string;
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

export function rawMessage(m: Pick<Msg, "subject" | "reply" | "headers" | "data">): RawMessage {
  const r: RawMessage = { subject: m.subject, size: m.data.length };
  if (m.reply) r.reply = m.reply;
  if (m.headers) {
    r.headers = {};
    for (const k of m.headers.keys()) r.headers[k] = m.headers.values(k);
  }
  try {
    r.payload = strictUtf8.decode(m.data);
  } catch {
    r.payloadBase64 = Buffer.from(m.data).toString("base64");
  }
  return r;
}

/** `[#n] time subject  size bytes`, the headers indented, then the payload as it is. */
export function formatRaw(r: RawMessage, n: number, o: { color?: boolean; utc?: boolean; at?: Date } = {}): string {
  const c = (code: string, s: string) => (o.color ? `${code}${s}${ANSI.reset}` : s);
  const head = [
    `[#${n}]`,
    c(ANSI.dim, clock((o.at ?? new Date()).toISOString(), o.utc)),
    c(ANSI.bold, r.subject),
    `${r.size} bytes`,
    r.reply ? `reply ${r.reply}` : "",
  ];
  const lines = [head.filter(Boolean).join("  ")];
  for (const [k, vs] of Object.entries(r.headers ?? {})) for (const v of vs) lines.push(`  ${c(ANSI.cyan, k)}: ${v}`);
  lines.push(r.payload ?? `<${r.size} bytes, not UTF-8; base64: ${r.payloadBase64}>`);
  return `${lines.join("\n")}\n`;
}

// ---- the command ---------------------------------------------------------------------------

const SPEC = {
  name: "tail",
  usage: USAGE,
  options: {
    pipeline: { type: "string", short: "p" },
    filter: { type: "string", short: "f" },
    raw: { type: "boolean", default: false },
    json: { type: "boolean", default: false },
  },
  positionals: { min: 1, max: 1 },
} as const;

function fail(message: string, code?: number): never {
  failWith("tail", message, code);
}

/** Exits unless the connection is configured or has events stored: tailing a typo would wait forever. */
async function checkConnection(nc: NatsConnection, connection: string, dir: string): Promise<void> {
  const known = configuredNames(dir);
  if (known.connections.has(connection)) return;
  try {
    await storedNames(await jetstreamManager(nc, { timeout: 5000 }), known);
  } catch (e) {
    // JetStream unreachable: the directory's answer stands (with what it could not ask).
    known.where.push(`not the streams: ${(e as Error).message}`);
  }
  if (known.connections.has(connection)) return;
  fail(
    `${unknownName("connection", connection, known.connections.keys(), { where: `looked in ${known.where.join(" and ")}` })}\nTo watch a subject whatever it is: npm run tail -- --raw '${connectionWildcard(connection)}'`,
  );
}

async function main(argv: string[]) {
  const { values, positionals } = parseCommand({ ...SPEC, argv });
  const target = positionals[0]!;
  if (values.raw) {
    if (values.pipeline !== undefined || values.filter !== undefined)
      usageError(SPEC, "--raw prints messages as they are: --pipeline and --filter apply to a connection's events");
    const problem = subjectProblem(target);
    if (problem) usageError(SPEC, problem);
  } else if (!/^[a-z0-9_-]{1,64}$/.test(target)) {
    fail(`"${target}" is not a connection name ([a-z0-9_-]{1,64}); for a NATS subject use --raw`, EXIT_USAGE);
  }
  const connection = target;
  const dir = process.env.TRIBUTARY_PIPELINES || "pipelines";

  let filter: Expression | undefined;
  if (values.filter !== undefined) {
    try {
      filter = compileExpression(values.filter);
    } catch (e) {
      fail(`--filter: ${(e as Error).message}`, EXIT_USAGE);
    }
  }

  let pipeline: Selection | undefined;
  if (values.pipeline !== undefined) {
    let config;
    try {
      config = loadConfig(dir);
    } catch (e) {
      fail(`--pipeline: cannot load the configuration in ${dir}: ${(e as Error).message}`);
    }
    const c = config.connections.get(connection);
    if (!c)
      fail(`--pipeline: ${unknownName("connection", connection, config.connections.keys(), { where: `in ${dir}` })}`);
    const names = (c.pipelines ?? []).map((x) => x.name);
    const p = (c.pipelines ?? []).find((x) => x.name === values.pipeline);
    if (!p)
      fail(
        `--pipeline: ${unknownName("pipeline", values.pipeline, names, { of: `of connection "${connection}"`, where: `in ${dir}` })}`,
      );
    // The pipeline's own selection: its filter, or the users preset when it has none, and its consents.
    pipeline = selectionOf(selectedBy(p));
  }
  const select = makeSelector(filter, pipeline);

  const color = !values.json && !!process.stdout.isTTY && !process.env.NO_COLOR;
  const err = (s: string) =>
    process.stderr.write(process.stderr.isTTY && !process.env.NO_COLOR ? `${ANSI.dim}${s}${ANSI.reset}\n` : `${s}\n`);
  // `tail … | head` closes stdout: stop quietly.
  process.stdout.on("error", (e: NodeJS.ErrnoException) => (e.code === "EPIPE" ? process.exit(0) : fail(String(e), 1)));

  const servers = natsServers();
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers: servers
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean),
      name: `tributary-tail-${connection}`,
      maxReconnectAttempts: -1,
    });
  } catch (e) {
    fail(`cannot connect to NATS at ${servers} (set NATS_URL): ${(e as Error).message}`, 1);
  }
  if (!values.raw && !pipeline) await checkConnection(nc, connection, dir);

  let stopping = false;
  const stop = async () => {
    if (stopping) process.exit(130);
    stopping = true;
    await nc.close().catch(() => {});
    process.exit(0);
  };
  process.on("SIGINT", () => void stop());
  process.on("SIGTERM", () => void stop());

  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect") err(`tail: disconnected from NATS; reconnecting…`);
      else if (s.type === "reconnect") err(`tail: reconnected to NATS`);
    }
  })();

  // With partitions a shard's subject has one more token (src/bus/subjects.ts StreamLayout): the
  // streams on the servers say which layout this deployment has, as for the other commands.
  const partitions =
    (await jetstreamManager(nc, { timeout: 5000 })
      .then(existingPartitions)
      .catch(() => undefined)) ?? Number(process.env.TRIBUTARY_STREAM_PARTITIONS || 1);
  const partitioned = partitions > 1;
  const subject = values.raw ? target : partitioned ? connectionWildcard(connection) : connectionSubjects(connection);
  const sub = nc.subscribe(subject);
  // The subscription is registered with the server once a flush returns: "listening" is then true.
  await nc.flush();
  const what = [values.pipeline && `pipeline ${values.pipeline}`, values.filter && `filter ${values.filter}`]
    .filter(Boolean)
    .join(", ");
  err(`tail: ${subject} on ${servers}${what ? ` (${what})` : ""}; Ctrl-C to stop`);

  if (values.raw) {
    let n = 0;
    for await (const m of sub) {
      const r = rawMessage(m);
      process.stdout.write(values.json ? `${JSON.stringify(r)}\n` : formatRaw(r, ++n, { color }) + "\n");
    }
    return;
  }

  const decoder = new TextDecoder();
  const reported = new Set<string>();
  for await (const m of sub) {
    let events: Event[];
    try {
      events = eventsOf(decoder.decode(m.data));
    } catch (e) {
      err(`tail: a message on ${m.subject} is not JSON: ${(e as Error).message}`);
      continue;
    }
    let out = "";
    const header = m.headers?.get(KIND_HEADER) || undefined;
    for (const e of events) {
      // A pipeline takes one kind of record (a raw connection's stream holds deliveries too).
      if (pipeline && recordKind(header, e) !== pipeline.takes) continue;
      let keep: boolean;
      try {
        keep = select(e);
      } catch (x) {
        // A filter that fails on an event: the pipeline would fail it too. Say so once per error.
        const msg = (x as Error).message ?? String(x);
        if (!reported.has(msg) && reported.size < 100) {
          reported.add(msg);
          err(`tail: filter failed on ${text(e.messageId) || "an event"}: ${msg}`);
        }
        continue;
      }
      if (!keep) continue;
      out += (values.json ? JSON.stringify(e) : formatLine(e, { color })) + "\n";
    }
    if (out) process.stdout.write(out);
  }
}

if (import.meta.main) await main(process.argv.slice(2));
