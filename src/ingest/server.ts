import { Elysia } from "elysia";
import type { ConfigStore } from "../config/store.ts";
import type { Config } from "../config/loader.ts";
import type { EventLog } from "../bus/event-log.ts";
import { WriteKeyIndex, writeKeyFromHeader } from "./auth.ts";
import { readBodyText, PayloadTooLargeError, BadEncodingError, BodyTimeoutError, BodyAbortedError, BodyOverloadError, SMALL_BODY_BYTES } from "./body.ts";
import { bodyWriteKey, ingest, type Endpoint, type IngestResult, type IngestStats } from "./handler.ts";
import { EVENT_TYPES } from "./event-schema.ts";
import { InFlightLimiter } from "./overload.ts";
import { forwardedFor, socketIp as canonicalSocketIp } from "./ip.ts";
import { RateLimiter } from "./rate-limit.ts";
import { log as logger } from "../util/log.ts";

export interface IngestServerOptions {
  trustProxy: boolean;
  maxRequestBytes: number;
  maxEventBytes: number;
  maxEventsPerRequest: number;
  /** Total decompressed body bytes being processed at once; beyond it, 429. */
  maxInFlightBytes: number;
  maxInFlightRequests: number;
  retryAfterSeconds: number;
  /** The whole body must arrive within this; a stalled or trickling sender gets 503 (Retry-After) and is cut off. */
  bodyTimeoutMs: number;
}

export const ingestDefaults: IngestServerOptions = {
  trustProxy: false,
  maxRequestBytes: 16 * 1024 * 1024,
  maxEventBytes: 256 * 1024,
  maxEventsPerRequest: 20_000,
  maxInFlightBytes: 64 * 1024 * 1024,
  maxInFlightRequests: 4096,
  retryAfterSeconds: 5,
  bodyTimeoutMs: 60_000,
};

/** Same body for every authentication failure, so a caller learns nothing about which keys exist. */
const UNAUTHORIZED: IngestResult = { status: 401, body: { error: "unauthorized: send a valid write key" }, headers: { "WWW-Authenticate": 'Basic realm="tributary"' } };

const CORS_ALLOW_HEADERS = "Authorization, Content-Type, Content-Encoding";

function corsHeaders(request: Request, allowed?: string[]): Record<string, string> {
  const origin = request.headers.get("origin");
  if (!origin) return {};
  if (allowed && !allowed.includes("*") && !allowed.includes(origin)) return {};
  return { "Access-Control-Allow-Origin": origin, Vary: "Origin", "Access-Control-Allow-Credentials": "true", "Access-Control-Expose-Headers": "Retry-After" };
}

function respond(r: IngestResult, extra: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(r.body), {
    status: r.status,
    headers: { "Content-Type": "application/json", ...r.headers, ...extra },
  });
}

/**
 * Client address in canonical form: the first X-Forwarded-For hop (`v4`, `v4:port`, `v6`,
 * `[v6]:port`) only when the operator says a proxy is in front, else the socket's. `{error}`,
 * naming the header, when a trusted header's first hop is not an address.
 */
export function clientIp(request: Request, socketIp: string | undefined, trustProxy: boolean): { ip?: string } | { error: string } {
  if (trustProxy) {
    const xff = request.headers.get("x-forwarded-for");
    if (xff !== null && xff.trim() !== "") return forwardedFor(xff);
  }
  return { ip: canonicalSocketIp(socketIp) };
}

/** A browser page's origin that the connection does not allow (the request is refused, 403). */
function originRefused(request: Request, allowed: string[] | undefined): string | undefined {
  const origin = request.headers.get("origin");
  if (!origin || !allowed || allowed.includes("*") || allowed.includes(origin)) return undefined;
  return origin;
}

export interface IngestServer {
  app: Elysia<any, any, any, any, any, any, any>;
  stats: IngestStats;
  limiter: InFlightLimiter;
  rateLimiter: RateLimiter;
}

/** The ingestion routes of PRODUCT.md §1 as an Elysia plugin. */
export function ingestRoutes(config: ConfigStore, eventLog: EventLog, opts: Partial<IngestServerOptions> = {}): IngestServer {
  const o = { ...ingestDefaults, ...opts };
  const stats: IngestStats = { accepted: 0, duplicates: 0, rejected: 0 };
  const limiter = new InFlightLimiter(o.maxInFlightBytes, o.maxInFlightRequests);
  const rateLimiter = new RateLimiter();
  let keys = new WriteKeyIndex(config.current);
  let keysOf: Config = config.current;
  const currentKeys = () => {
    if (keysOf !== config.current) {
      keysOf = config.current;
      keys = new WriteKeyIndex(keysOf);
    }
    return keys;
  };

  async function handle(endpoint: Endpoint, request: Request, socketIp: string | undefined): Promise<Response> {
    const receivedAt = Date.now();
    const index = currentKeys();
    const headerKey = writeKeyFromHeader(request.headers.get("authorization"));
    // The header wins when both are present; without a header the key may come in the body.
    let connection = request.headers.has("authorization") ? index.lookup(headerKey) : undefined;
    if (request.headers.has("authorization") && !connection) return respond(UNAUTHORIZED, corsHeaders(request));

    // Memory is reserved for bytes that arrived, not for bytes promised: a sender that declares a
    // large Content-Length and then stalls (slow loris) holds at most SMALL_BODY_BYTES.
    const declared = Number(request.headers.get("content-length") ?? 0) || SMALL_BODY_BYTES;
    let reserve = Math.min(declared, SMALL_BODY_BYTES, o.maxRequestBytes);
    const overloaded = () => respond({ status: 429, body: { error: "node overloaded; retry later" }, headers: { "Retry-After": "1" } }, corsHeaders(request));
    if (!limiter.tryAcquire(reserve)) return overloaded();
    const grow = (size: number) => {
      if (size <= reserve) return true;
      if (!limiter.tryGrow(size - reserve)) return false;
      reserve = size;
      return true;
    };
    try {
      let text: string;
      try {
        text = await readBodyText(request, { limit: o.maxRequestBytes, timeoutMs: o.bodyTimeoutMs, grow });
      } catch (e) {
        if (e instanceof PayloadTooLargeError) return respond({ status: 413, body: { error: e.message } }, corsHeaders(request));
        if (e instanceof BadEncodingError) return respond({ status: 400, body: { error: e.message } }, corsHeaders(request));
        if (e instanceof BodyOverloadError) return overloaded();
        if (e instanceof BodyTimeoutError) return respond({ status: 503, body: { error: e.message }, headers: { Connection: "close", "Retry-After": String(o.retryAfterSeconds) } }, corsHeaders(request));
        if (e instanceof BodyAbortedError) {
          logger.debug("request body ended early", { error: e.message });
          return respond({ status: 400, body: { error: e.message }, headers: { Connection: "close" } });
        }
        throw e;
      }
      // Characters, not bytes, for an inflated body: close enough for a memory bound.
      if (!grow(text.length)) return overloaded();
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch (e) {
        const error = text.trim() === "" ? "invalid JSON: the body is empty" : `invalid JSON: ${(e as Error).message}`;
        return respond({ status: 400, body: { error } }, corsHeaders(request));
      }
      if (!connection) connection = index.lookup(bodyWriteKey(body));
      if (!connection) return respond(UNAUTHORIZED, corsHeaders(request));
      // Write keys are public in web pages: a browser on a page the connection does not allow is refused.
      const refused = originRefused(request, connection.allowedOrigins);
      if (refused !== undefined) return respond({ status: 403, body: { error: `origin ${JSON.stringify(refused.slice(0, 256))} is not allowed for this connection` } });
      const address = clientIp(request, socketIp, o.trustProxy);
      if ("error" in address) return respond({ status: 400, body: { error: address.error } }, corsHeaders(request, connection.allowedOrigins));
      const result = await ingest(
        connection,
        endpoint,
        body,
        { receivedAt, ip: address.ip },
        eventLog,
        { maxEventBytes: o.maxEventBytes, maxEventsPerRequest: o.maxEventsPerRequest, retryAfterSeconds: o.retryAfterSeconds },
        stats,
        rateLimiter,
      );
      return respond(result, corsHeaders(request, connection.allowedOrigins));
    } catch (e) {
      logger.error("ingest failed", { error: String((e as Error)?.stack ?? e) });
      return respond({ status: 503, body: { error: "internal error; retry later" }, headers: { "Retry-After": String(o.retryAfterSeconds) } });
    } finally {
      limiter.release(reserve);
    }
  }

  const routes: [string, Endpoint][] = [
    ["/v1/events", { kind: "events" }],
    ["/v1/batch", { kind: "batch" }],
    ...EVENT_TYPES.map((t): [string, Endpoint] => [`/v1/${t}`, { kind: "single", type: t }]),
  ];

  let app = new Elysia({ name: "ingest" });
  for (const [path, endpoint] of routes) {
    app = app
      // Bodies are JSON whatever the Content-Type says, gzip under x-www-form-urlencoded included:
      // never let the framework parse them.
      .post(path, ({ request, server }) => handle(endpoint, request, server?.requestIP(request)?.address), { parse: "none" })
      .options(
        path,
        ({ request }) =>
          new Response(null, {
            status: 204,
            headers: {
              ...corsHeaders(request),
              "Access-Control-Allow-Methods": "POST, OPTIONS",
              "Access-Control-Allow-Headers": request.headers.get("access-control-request-headers") ?? CORS_ALLOW_HEADERS,
              "Access-Control-Max-Age": "86400",
            },
          }),
      ) as typeof app;
  }
  return { app, stats, limiter, rateLimiter };
}
