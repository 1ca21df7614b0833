import { Elysia } from "elysia";
import type { ConfigStore } from "../config/store.ts";
import type { Config } from "../config/loader.ts";
import type { EventLog } from "../bus/event-log.ts";
import { WriteKeyIndex, topLevelWriteKey, writeKeyFromHeader } from "./auth.ts";
import {
  readBodyText,
  PayloadTooLargeError,
  BadEncodingError,
  BodyTimeoutError,
  BodyAbortedError,
  BodyOverloadError,
  BodyRefusedError,
  SMALL_BODY_BYTES,
} from "./body.ts";
import { bodyWriteKey, ingest, type Endpoint, type IngestResult, type IngestStats } from "./handler.ts";
import { EVENT_TYPES } from "./event-schema.ts";
import { InFlightLimiter } from "./overload.ts";
import { forwardedFor, socketIp as canonicalSocketIp } from "./ip.ts";
import { RateLimiter } from "./rate-limit.ts";
import { allows, clipOrigin, corsHeaders, originRefused, originRefusedResponse } from "./cors.ts";
import { RefusalLog } from "./refusal-log.ts";
import { sdkConfigRoutes } from "./sdk-config.ts";
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
  /**
   * Largest body (after decompression) of a request without an `Authorization` header, whose write
   * key must then be read from the body before anything else is done with it; beyond it, 413.
   */
  maxBodyKeyBytes: number;
  /** Bytes and requests without an `Authorization` header being read at once, over all senders; beyond either, 429. */
  maxBodyKeyInFlightBytes: number;
  maxBodyKeyInFlightRequests: number;
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
  // analytics-node before 3.1 sends the key only in the body, in batches of about 500 KB.
  maxBodyKeyBytes: 1024 * 1024,
  maxBodyKeyInFlightBytes: 16 * 1024 * 1024,
  maxBodyKeyInFlightRequests: 256,
};

/** Same body for every authentication failure, so a caller learns nothing about which keys exist. */
const UNAUTHORIZED: IngestResult = {
  status: 401,
  body: { error: "unauthorized: send a valid write key" },
  headers: { "WWW-Authenticate": 'Basic realm="tributary"' },
};

const CORS_ALLOW_HEADERS = "Authorization, Content-Type, Content-Encoding";

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
export function clientIp(
  request: Request,
  socketIp: string | undefined,
  trustProxy: boolean,
): { ip?: string } | { error: string } {
  if (trustProxy) {
    const xff = request.headers.get("x-forwarded-for");
    if (xff !== null && xff.trim() !== "") return forwardedFor(xff);
  }
  return { ip: canonicalSocketIp(socketIp) };
}

export interface IngestServer {
  app: Elysia<any, any, any, any, any, any, any>;
  stats: IngestStats;
  limiter: InFlightLimiter;
  rateLimiter: RateLimiter;
}

/** The ingestion routes of PRODUCT.md §1 as an Elysia plugin. */
export function ingestRoutes(
  config: ConfigStore,
  eventLog: EventLog,
  opts: Partial<IngestServerOptions> = {},
): IngestServer {
  const o = { ...ingestDefaults, ...opts };
  const stats: IngestStats = { accepted: 0, duplicates: 0, rejected: 0 };
  const limiter = new InFlightLimiter(o.maxInFlightBytes, o.maxInFlightRequests);
  const rateLimiter = new RateLimiter();
  // Requests without an Authorization header share a budget of their own: what anyone can make
  // the node do before it knows who is asking is bounded per request and in total.
  const bodyKeyLimiter = new InFlightLimiter(o.maxBodyKeyInFlightBytes, o.maxBodyKeyInFlightRequests);
  let keys = new WriteKeyIndex(config.current);
  let keysOf: Config = config.current;
  /** The `allowedOrigins` of every key connection, `undefined` in it when one allows every origin. */
  let originLists: (string[] | undefined)[] = [];
  const currentKeys = () => {
    if (keysOf !== config.current) {
      keysOf = config.current;
      keys = new WriteKeyIndex(keysOf);
      originLists = [];
    }
    return keys;
  };
  /** Unauthenticated answers and preflights: an origin that some connection allows, else none. */
  const anyConnection = (origin: string | null): string[] | undefined => {
    currentKeys();
    if (originLists.length === 0)
      originLists = [...keysOf.connections.values()].filter((c) => c.source !== "raw").map((c) => c.allowedOrigins);
    if (origin !== null && originLists.some((l) => allows(l, origin))) return undefined;
    return [];
  };
  const publicCors = (request: Request, credentials = false) =>
    corsHeaders(request, anyConnection(request.headers.get("origin")), credentials);
  // Refusals are logged at warn, rate-limited so a hostile page cannot flood the log.
  const refusals = new RefusalLog();
  const pathOf = (request: Request) => new URL(request.url).pathname;

  /**
   * The connection refuses the request's Origin: a 403 the page can read (see cors.ts), and a
   * warn line naming the connection and the origin, never the key.
   */
  const refuseOrigin = (request: Request, connection: string, origin: string, credentials: boolean): Response => {
    refusals.warn(
      `origin\n${connection}\n${clipOrigin(origin)}`,
      "request refused: origin not allowed by the connection",
      { connection, origin: clipOrigin(origin), path: pathOf(request) },
    );
    return originRefusedResponse(origin, credentials);
  };

  /**
   * `keyIn: "query"` is sendBeacon's route (`?writeKey=`), which cannot set headers. A request
   * without an Authorization header is unauthenticated until its key is checked, whether the key is
   * in the query string or the body: it is bounded by the same body limit and shared budget.
   */
  async function handle(
    endpoint: Endpoint,
    request: Request,
    socketIp: string | undefined,
    keyIn: "body" | "query" = "body",
  ): Promise<Response> {
    const receivedAt = Date.now();
    const index = currentKeys();
    // The header wins when both are present; without a header the key comes in the query string
    // (beacon route) or the body.
    const keyless = !request.headers.has("authorization");
    const keyInBody = keyless && keyIn === "body";
    let connection = keyless
      ? keyIn === "query"
        ? index.lookup(new URL(request.url).searchParams.get("writeKey") ?? undefined)
        : undefined
      : index.lookup(writeKeyFromHeader(request.headers.get("authorization")));
    if (!keyInBody && !connection) return respond(UNAUTHORIZED, publicCors(request, keyless));
    // Known before the body is read: a refused origin costs no more than this.
    if (connection) {
      const refused = originRefused(request, connection.allowedOrigins);
      if (refused !== undefined) return refuseOrigin(request, connection.connection, refused, keyless);
    }

    // Memory is reserved for bytes that arrived, not for bytes promised: a sender that declares a
    // large Content-Length and then stalls (slow loris) holds at most SMALL_BODY_BYTES.
    const declared = Number(request.headers.get("content-length") ?? 0) || SMALL_BODY_BYTES;
    const limit = keyless ? Math.min(o.maxBodyKeyBytes, o.maxRequestBytes) : o.maxRequestBytes;
    let reserve = Math.min(declared, SMALL_BODY_BYTES, limit);
    const overloaded = () =>
      respond(
        { status: 429, body: { error: "node overloaded; retry later" }, headers: { "Retry-After": "1" } },
        publicCors(request, keyless),
      );
    // Unauthenticated bytes are held in both budgets until the body has been read and its key known.
    let bodyKeyReserve = keyless ? reserve : 0;
    if (keyless && !bodyKeyLimiter.tryAcquire(reserve)) return overloaded();
    const releaseBodyKey = () => {
      if (!keyless || bodyKeyReserve < 0) return;
      bodyKeyLimiter.release(bodyKeyReserve);
      bodyKeyReserve = -1;
    };
    if (!limiter.tryAcquire(reserve)) {
      releaseBodyKey();
      return overloaded();
    }
    const grow = (size: number) => {
      if (size <= reserve) return true;
      if (bodyKeyReserve >= 0 && keyless) {
        if (size > bodyKeyReserve) {
          if (!bodyKeyLimiter.tryGrow(size - bodyKeyReserve)) return false;
          bodyKeyReserve = size;
        }
      }
      if (!limiter.tryGrow(size - reserve)) return false;
      reserve = size;
      return true;
    };
    try {
      let text: string;
      try {
        // Without a key header only a JSON object can carry one (or be a beacon's batch): anything
        // else is refused at its first byte.
        text = await readBodyText(request, {
          limit,
          timeoutMs: o.bodyTimeoutMs,
          grow,
          ...(keyless && { firstByte: (b: number) => b === 0x7b /* { */ }),
        });
      } catch (e) {
        if (e instanceof BodyRefusedError)
          return respond(
            keyInBody ? UNAUTHORIZED : { status: 400, body: { error: "body must be a JSON object" } },
            publicCors(request, keyless),
          );
        if (e instanceof PayloadTooLargeError) {
          const error = keyless
            ? `a request without an Authorization header may be at most ${limit} bytes after decompression; send the write key in the Authorization header for larger bodies`
            : e.message;
          return respond({ status: 413, body: { error } }, publicCors(request, keyless));
        }
        if (e instanceof BadEncodingError)
          return respond({ status: 400, body: { error: e.message } }, publicCors(request, keyless));
        if (e instanceof BodyOverloadError) return overloaded();
        if (e instanceof BodyTimeoutError)
          return respond(
            {
              status: 503,
              body: { error: e.message },
              headers: { Connection: "close", "Retry-After": String(o.retryAfterSeconds) },
            },
            publicCors(request, keyless),
          );
        if (e instanceof BodyAbortedError) {
          logger.debug("request body ended early", { error: e.message });
          return respond({ status: 400, body: { error: e.message }, headers: { Connection: "close" } });
        }
        throw e;
      }
      // Characters, not bytes, for an inflated body: close enough for a memory bound.
      if (!grow(text.length)) return overloaded();
      // The key is found by a scan that builds nothing; the body is parsed only once it is known.
      let bodyKey: string | undefined;
      if (keyInBody) {
        bodyKey = topLevelWriteKey(text);
        connection = index.lookup(bodyKey);
        if (!connection) return respond(UNAUTHORIZED, publicCors(request, true));
        const refused = originRefused(request, connection.allowedOrigins);
        if (refused !== undefined) return refuseOrigin(request, connection.connection, refused, true);
      }
      releaseBodyKey();
      const c = connection!;
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch (e) {
        const error = text.trim() === "" ? "invalid JSON: the body is empty" : `invalid JSON: ${(e as Error).message}`;
        return respond({ status: 400, body: { error } }, corsHeaders(request, c.allowedOrigins, keyless));
      }
      if (keyInBody && bodyWriteKey(body) !== bodyKey) return respond(UNAUTHORIZED, publicCors(request, true));
      const address = clientIp(request, socketIp, o.trustProxy);
      if ("error" in address)
        return respond(
          { status: 400, body: { error: address.error } },
          corsHeaders(request, c.allowedOrigins, keyless),
        );
      const result = await ingest(
        c,
        endpoint,
        body,
        { receivedAt, ip: address.ip },
        eventLog,
        {
          maxEventBytes: o.maxEventBytes,
          maxEventsPerRequest: o.maxEventsPerRequest,
          retryAfterSeconds: o.retryAfterSeconds,
        },
        stats,
        rateLimiter,
      );
      return respond(result, corsHeaders(request, c.allowedOrigins, keyless));
    } catch (e) {
      logger.error("ingest failed", { error: String((e as Error)?.stack ?? e) });
      return respond({
        status: 503,
        body: { error: "internal error; retry later" },
        headers: { "Retry-After": String(o.retryAfterSeconds) },
      });
    } finally {
      releaseBodyKey();
      limiter.release(reserve);
    }
  }

  /**
   * Answer to a preflight: yes only for an origin some connection allows, never with credentials
   * except on the beacon route (sendBeacon always sends them; fetch/XHR senders put the key in a
   * header and send no cookies). A refused preflight is logged: the browser then sends nothing,
   * so this line is the only trace of a page whose origin no connection lists.
   */
  const preflight = (request: Request, methods: string, credentials = false) => {
    const cors = publicCors(request, credentials);
    const origin = request.headers.get("origin");
    if (origin !== null && !cors["Access-Control-Allow-Origin"]) {
      refusals.warn(`preflight\n${clipOrigin(origin)}`, "preflight refused: no connection allows this origin", {
        origin: clipOrigin(origin),
        path: pathOf(request),
      });
    }
    return new Response(null, {
      status: 204,
      headers: {
        ...cors,
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": request.headers.get("access-control-request-headers") ?? CORS_ALLOW_HEADERS,
        "Access-Control-Max-Age": "86400",
      },
    });
  };

  const routes: [string, Endpoint, ("body" | "query")?][] = [
    ["/v1/events", { kind: "events" }],
    ["/v1/batch", { kind: "batch" }],
    ...EVENT_TYPES.map((t): [string, Endpoint] => [`/v1/${t}`, { kind: "single", type: t }]),
    // analytics.js (Segment's browser SDK) posts to the type's first letter, and batches to /v1/b.
    ...EVENT_TYPES.map((t): [string, Endpoint] => [`/v1/${t[0]}`, { kind: "single", type: t }]),
    ["/v1/b", { kind: "batch" }],
    // RudderStack's BeaconQueue: navigator.sendBeacon, the key in the query string.
    ["/beacon/v1/batch", { kind: "batch" }, "query"],
  ];

  let app = new Elysia({ name: "ingest" });
  for (const [path, endpoint, keyIn] of routes) {
    app = app
      // Bodies are JSON whatever the Content-Type says, gzip under x-www-form-urlencoded included:
      // never let the framework parse them.
      .post(path, ({ request, server }) => handle(endpoint, request, server?.requestIP(request)?.address, keyIn), {
        parse: "none",
      })
      .options(path, ({ request }) => preflight(request, "POST, OPTIONS", keyIn === "query")) as typeof app;
  }
  const sdk = sdkConfigRoutes({
    lookup: (key) => currentKeys().lookup(key),
    publicCors,
    preflight,
    refuseOrigin,
    trustProxy: o.trustProxy,
  });
  return { app: app.use(sdk), stats, limiter, rateLimiter };
}
