#!/usr/bin/env bun
/**
 * `bun run tail <connection> [--pipeline NAME] [--filter JSONATA] [--json]`: a connection's events
 * live in the terminal (PRODUCT.md §6), read straight from NATS rather than the HTTP API. It is a
 * plain (core NATS) subscription to `tributary.events.<connection>.*`, so it sees what every node
 * stores and takes nothing from the stream: each message is a JSON array of normalised events
 * (a raw webhook connection's deliveries are objects with a `raw` field).
 */
import { parseArgs } from "node:util";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { connectionSubjects } from "../src/bus/subjects.ts";
import { loadConfig } from "../src/config/loader.ts";
import { compileExpression, jsonataBoolean, type Expression } from "../src/pipeline/filter.ts";
import { consentGranted } from "../src/ingest/consent.ts";

const USAGE = `usage: bun run tail <connection> [--pipeline NAME] [--filter JSONATA] [--json]

Prints a connection's events as they are stored, one line each (time, type, event or name,
userId or anonymousId, messageId), straight from NATS ($NATS_URL, default nats://127.0.0.1:4222).

  -p, --pipeline NAME    only events that pipeline's filter (and required consents) would keep;
                         the pipeline comes from $TRIBUTARY_PIPELINES (default ./pipelines)
  -f, --filter JSONATA   only events for which this JSONata expression is true,
                         e.g. --filter 'type = "track" and event = "Signed Up"'
      --json             whole events, one JSON document per line
  -h, --help             this help

Ctrl-C stops.`;

type Event = Record<string, unknown>;

// ---- formatting ----------------------------------------------------------------------------

const ANSI = { reset: "\x1b[0m", dim: "\x1b[2m", bold: "\x1b[1m", red: "\x1b[31m", green: "\x1b[32m", yellow: "\x1b[33m", blue: "\x1b[34m", magenta: "\x1b[35m", cyan: "\x1b[36m" };
const TYPE_COLOUR: Record<string, string> = {
  track: ANSI.magenta,
  identify: ANSI.green,
  page: ANSI.yellow,
  screen: ANSI.yellow,
  group: ANSI.blue,
  alias: ANSI.blue,
  raw: ANSI.cyan,
};

const text = (v: unknown): string => (typeof v === "string" ? v : v === undefined || v === null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));
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
    return { time: e.raw.receivedAt, type: "raw", name: `${rows.length} row${rows.length === 1 ? "" : "s"}${preview ? ` ${preview}` : ""}`, user: "" };
  }
  const type = text(e.type) || "?";
  let name = "";
  if (type === "track") name = text(e.event);
  else if (type === "page" || type === "screen") name = text(e.name) || text(isObject(e.properties) ? e.properties.name : undefined);
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

export function makeSelector(filter?: Expression, pipeline?: { filter?: Expression; consents?: string[] }): Selector {
  return (e) => {
    if (pipeline) {
      if (!consentGranted(e, pipeline.consents)) return false;
      if (pipeline.filter && !jsonataBoolean(pipeline.filter.evaluate(e))) return false;
    }
    if (filter && !jsonataBoolean(filter.evaluate(e))) return false;
    return true;
  };
}

// ---- the command ---------------------------------------------------------------------------

function fail(message: string, code = 2): never {
  process.stderr.write(`tail: ${message}\n`);
  process.exit(code);
}

async function main(argv: string[]) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        pipeline: { type: "string", short: "p" },
        filter: { type: "string", short: "f" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (e) {
    fail(`${(e as Error).message}\n\n${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (positionals.length !== 1) fail(positionals.length ? `one connection at a time\n\n${USAGE}` : USAGE);
  const connection = positionals[0]!;
  if (!/^[a-z0-9_-]{1,64}$/.test(connection)) fail(`"${connection}" is not a connection name ([a-z0-9_-]{1,64})`);

  let filter: Expression | undefined;
  if (values.filter !== undefined) {
    try {
      filter = compileExpression(values.filter);
    } catch (e) {
      fail(`--filter: ${(e as Error).message}`);
    }
  }

  let pipeline: { filter?: Expression; consents?: string[] } | undefined;
  if (values.pipeline !== undefined) {
    const dir = process.env.TRIBUTARY_PIPELINES || "pipelines";
    let config;
    try {
      config = loadConfig(dir);
    } catch (e) {
      fail(`--pipeline: cannot load the configuration in ${dir}: ${(e as Error).message}`);
    }
    const c = config.connections.get(connection);
    if (!c) fail(`--pipeline: no connection "${connection}" in ${dir} (there: ${[...config.connections.keys()].join(", ") || "none"})`);
    const p = (c.pipelines ?? []).find((x) => x.name === values.pipeline);
    if (!p) fail(`--pipeline: connection "${connection}" has no pipeline "${values.pipeline}" (it has: ${(c.pipelines ?? []).map((x) => x.name).join(", ") || "none"})`);
    pipeline = { filter: p.filter ? compileExpression(p.filter) : undefined, consents: p.consents };
  }
  const select = makeSelector(filter, pipeline);

  const color = !values.json && !!process.stdout.isTTY && !process.env.NO_COLOR;
  const err = (s: string) => process.stderr.write(process.stderr.isTTY && !process.env.NO_COLOR ? `${ANSI.dim}${s}${ANSI.reset}\n` : `${s}\n`);
  // `tail … | head` closes stdout: stop quietly.
  process.stdout.on("error", (e: NodeJS.ErrnoException) => (e.code === "EPIPE" ? process.exit(0) : fail(String(e), 1)));

  const servers = process.env.NATS_URL || "nats://127.0.0.1:4222";
  let nc: NatsConnection;
  try {
    nc = await connect({ servers: servers.split(","), name: `tributary-tail-${connection}`, maxReconnectAttempts: -1 });
  } catch (e) {
    fail(`cannot connect to NATS at ${servers}: ${(e as Error).message}`, 1);
  }

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

  const subject = connectionSubjects(connection);
  const sub = nc.subscribe(subject);
  const what = [values.pipeline && `pipeline ${values.pipeline}`, values.filter && `filter ${values.filter}`].filter(Boolean).join(", ");
  err(`tail: ${subject} on ${servers}${what ? ` (${what})` : ""}; Ctrl-C to stop`);

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
    for (const e of events) {
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
