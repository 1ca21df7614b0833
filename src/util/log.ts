import { AsyncLocalStorage } from "node:async_hooks";

/**
 * Log records on stderr: one JSON line each, so operators can ship logs without parsing prose,
 * or, on a terminal, one compact `time LEVEL msg k=v` line each (LOG_FORMAT=pretty|json; the
 * default is pretty when stderr is a terminal, JSON otherwise).
 * LOG_LEVEL and LOG_FORMAT are validated with the other variables (src/config/env.ts) by the
 * process that parses the environment, which sets them here (src/main.ts). This module is below
 * the configuration, so a process that has not (a node's threads and worker processes, which
 * inherit the environment the node validated; tests; tools) reads them leniently, as env.ts does.
 * Records written while serving a request carry its id (also sent back as X-Request-Id).
 * Nothing here logs bodies, write keys or secrets: callers pass only ids, counts and errors.
 */
export const requestContext = new AsyncLocalStorage<{ requestId: string }>();
export type LogLevel = "debug" | "info" | "warn" | "error";
/** The levels, least severe first: LOG_LEVEL takes one of them (src/config/env.ts). */
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const satisfies readonly LogLevel[];
export type LogFormat = "json" | "pretty";
export const LOG_FORMATS: readonly LogFormat[] = ["json", "pretty"];
const order: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/**
 * LOG_LEVEL when it names a level (in any case, as env.ts reads it), else info: the level of a
 * process that has not set one from its validated options.
 */
export function defaultLogLevel(env: Record<string, string | undefined> = process.env): LogLevel {
  const l = env.LOG_LEVEL?.toLowerCase();
  return l !== undefined && Object.hasOwn(order, l) ? (l as LogLevel) : "info";
}
let threshold = order[defaultLogLevel()];

/** LOG_FORMAT when it names a format, else pretty on a terminal and JSON elsewhere. */
export function defaultLogFormat(
  env: Record<string, string | undefined> = process.env,
  tty = !!process.stderr.isTTY,
): LogFormat {
  const f = env.LOG_FORMAT?.toLowerCase();
  return f === "json" || f === "pretty" ? f : tty ? "pretty" : "json";
}
let format: LogFormat = defaultLogFormat();
// Colours only for a person looking at a terminal (https://no-color.org).
const colour = !!process.stderr.isTTY && !process.env.NO_COLOR;

export function setLogLevel(level: LogLevel): void {
  threshold = order[level];
}
export function setLogFormat(f: LogFormat): void {
  format = f;
}
export function logFormat(): LogFormat {
  return format;
}

const LEVEL_TEXT: Record<LogLevel, [string, string]> = {
  debug: ["DEBUG", "\x1b[90m"],
  info: ["INFO ", "\x1b[36m"],
  warn: ["WARN ", "\x1b[33m"],
  error: ["ERROR", "\x1b[31m"],
};

/** A value as `k=v` shows it: bare when it is one plain word, JSON otherwise. */
function show(v: unknown): string {
  if (typeof v === "string") return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  if (v === undefined) return "undefined";
  return JSON.stringify(v) ?? String(v);
}

export function prettyLine(level: LogLevel, msg: string, fields: Record<string, unknown>, now = new Date()): string {
  const [name, c] = LEVEL_TEXT[level];
  const time = now.toTimeString().slice(0, 8);
  const lvl = colour ? `${c}${name}\x1b[0m` : name;
  let line = `${colour ? `\x1b[2m${time}\x1b[0m` : time} ${lvl} ${msg}`;
  let tail = "";
  for (const [k, v] of Object.entries(fields)) {
    // A stack trace reads best as the lines it has, under the record.
    if (typeof v === "string" && v.includes("\n")) tail += `\n  ${k}: ${v.replace(/\n/g, "\n    ")}`;
    else line += ` ${k}=${show(v)}`;
  }
  return line + tail + "\n";
}

function write(level: LogLevel, msg: string, fields?: Record<string, unknown>) {
  if (order[level] < threshold) return;
  const requestId = requestContext.getStore()?.requestId;
  const all = { ...(requestId && { requestId }), ...fields };
  process.stderr.write(
    format === "pretty"
      ? prettyLine(level, msg, all)
      : JSON.stringify({ time: new Date().toISOString(), level, msg, ...all }) + "\n",
  );
}

export const log = {
  debug: (msg: string, fields?: Record<string, unknown>) => write("debug", msg, fields),
  info: (msg: string, fields?: Record<string, unknown>) => write("info", msg, fields),
  warn: (msg: string, fields?: Record<string, unknown>) => write("warn", msg, fields),
  error: (msg: string, fields?: Record<string, unknown>) => write("error", msg, fields),
};
