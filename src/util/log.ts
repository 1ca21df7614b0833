import { AsyncLocalStorage } from "node:async_hooks";

/**
 * One JSON line per log record on stderr, so operators can ship logs without parsing prose.
 * Records written while serving a request carry its id (also sent back as X-Request-Id).
 * Nothing here logs bodies, write keys or secrets: callers pass only ids, counts and errors.
 */
export const requestContext = new AsyncLocalStorage<{ requestId: string }>();
type Level = "debug" | "info" | "warn" | "error";
const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };
let threshold = order[(process.env.LOG_LEVEL as Level) ?? "info"] ?? order.info;

export function setLogLevel(level: Level): void {
  threshold = order[level];
}

function write(level: Level, msg: string, fields?: Record<string, unknown>) {
  if (order[level] < threshold) return;
  const requestId = requestContext.getStore()?.requestId;
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level, msg, ...(requestId && { requestId }), ...fields }) + "\n");
}

export const log = {
  debug: (msg: string, fields?: Record<string, unknown>) => write("debug", msg, fields),
  info: (msg: string, fields?: Record<string, unknown>) => write("info", msg, fields),
  warn: (msg: string, fields?: Record<string, unknown>) => write("warn", msg, fields),
  error: (msg: string, fields?: Record<string, unknown>) => write("error", msg, fields),
};
