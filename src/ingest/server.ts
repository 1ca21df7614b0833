import { Elysia, type AnyElysia } from "elysia";
import type { ConfigStore } from "../config/store.ts";
import type { Config } from "../config/loader.ts";
import type { EventLog } from "../bus/event-log.ts";
import { UnauthorizedError, WriteKeyIndex, topLevelWriteKey, writeKeyFromHeader } from "./auth.ts";
import { BodyRefusedError, PayloadTooLargeError } from "./body.ts";
import { bodyWriteKey, ingest, type Endpoint, type IngestResult, type IngestStats } from "./handler.ts";
import { EVENT_TYPES } from "./event-schema.ts";
import { InFlightLimiter } from "./overload.ts";
import { forwardedFor, socketIp as canonicalSocketIp } from "./ip.ts";
import { RateLimiter } from "./rate-limit.ts";
import { allows, clipOrigin, corsHeaders, originRefused, originRefusedResponse } from "./cors.ts";
import { RefusalLog } from "./refusal-log.ts";
import { sdkConfigRoutes } from "./sdk-config.ts";
import { sourceContext, type Source, type SourceContext, type SourceSpec } from "./source.ts";
import type { HttpError } from "./http-error.ts";
import { ingestDefaults as envIngestDefaults } from "../config/env.ts";

export interface IngestServerOptions {
  trustProxy: boolean;
  maxRequestBytes: number;
  maxEventBytes: number;
  maxEventsPerRequest: number;
  /** The node's budget (see {@link IntakeBudget}): used only when {@link ingestRoutes} builds a node of its own. */
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
  /** The node's rate-limit buckets when several threads answer (sharedRateLimitState); else this source's own. */
  rateLimitState?: SharedArrayBuffer;
}

/** From config/env.ts, the one place defaults live (the same object: tests may change a field). */
export const ingestDefaults: IngestServerOptions = envIngestDefaults;

/** Same body for every authentication failure, so a caller learns nothing about which keys exist. */
const UNAUTHORIZED = new UnauthorizedError();

const CORS_ALLOW_HEADERS = "Authorization, Content-Type, Content-Encoding";

function respond(r: IngestResult | HttpError, extra: Record<string, string> = {}): Response {
  const body = "body" in r ? r.body : { error: r.message };
  return new Response(JSON.stringify(body), {
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

/** The HTTP event source: the node's event counters, its shared in-flight budget, and the routes. */
export interface IngestServer extends Source {
  readonly routes: AnyElysia;
  /** The same plugin as `routes`. */
  app: AnyElysia;
  stats: IngestStats;
  /** The node's in-flight budget, which every source's bodies share. */
  limiter: InFlightLimiter;
  rateLimiter: RateLimiter;
}

/** The ingestion routes of PRODUCT.md §1 (`/v1/*`, beacon and SDK settings) as a source. */
export function httpEvents(opts: Partial<IngestServerOptions> = {}): SourceSpec<IngestServer> {
  const o = { ...ingestDefaults, ...opts };
  return { name: "http-events", build: (cx) => buildHttpEvents(o, cx) };
}

/** The HTTP event source as a node of its own would mount it, with its own in-flight budget. */
export function ingestRoutes(
  config: ConfigStore,
  eventLog: EventLog,
  opts: Partial<IngestServerOptions> = {},
): IngestServer {
  const o = { ...ingestDefaults, ...opts };
  return httpEvents(o).build(sourceContext(config, eventLog, o));
}

function buildHttpEvents(o: IngestServerOptions, cx: SourceContext): IngestServer {
  const { config, eventLog, intake, stats } = cx;
  const rateLimiter = new RateLimiter(undefined, o.rateLimitState);
  // Requests without an Authorization header share a budget of their own: what anyone can make
  // the node do before it knows who is asking is bounded per request and in total.
  const bodyKeyLimiter = new InFlightLimiter(o.maxBodyKeyInFlightBytes, o.maxBodyKeyInFlightRequests);
  const keylessBudgets = [bodyKeyLimiter];
  const keylessLimit = Math.min(o.maxBodyKeyBytes, o.maxRequestBytes);
  const keylessTooLarge = `a request without an Authorization header may be at most ${keylessLimit} bytes after decompression; send the write key in the Authorization header for larger bodies`;
  const limits = {
    maxEventBytes: o.maxEventBytes,
    maxEventsPerRequest: o.maxEventsPerRequest,
    retryAfterSeconds: o.retryAfterSeconds,
  };
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

    return intake.text(
      request,
      {
        limit: keyless ? keylessLimit : o.maxRequestBytes,
        timeoutMs: o.bodyTimeoutMs,
        retryAfterSeconds: o.retryAfterSeconds,
        // Unauthenticated bytes are held in both budgets until the body has been read and its key known.
        ...(keyless && {
          budgets: keylessBudgets,
          // Without a key header only a JSON object can carry one (or be a beacon's batch): anything
          // else is refused at its first byte.
          firstByte: (b: number) => b === 0x7b /* { */,
          refine: (e: HttpError) =>
            e instanceof BodyRefusedError && keyInBody
              ? UNAUTHORIZED
              : e instanceof PayloadTooLargeError
                ? new PayloadTooLargeError(e.limit, keylessTooLarge)
                : e,
        }),
        refusalHeaders: () => publicCors(request, keyless),
        failure: { message: "ingest failed" },
      },
      async (text, held) => {
        // The key is found by a scan that builds nothing; the body is parsed only once it is known.
        let bodyKey: string | undefined;
        if (keyInBody) {
          bodyKey = topLevelWriteKey(text);
          connection = index.lookup(bodyKey);
          if (!connection) return respond(UNAUTHORIZED, publicCors(request, true));
          const refused = originRefused(request, connection.allowedOrigins);
          if (refused !== undefined) return refuseOrigin(request, connection.connection, refused, true);
        }
        held.release(bodyKeyLimiter);
        const c = connection!;
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch (e) {
          const error =
            text.trim() === "" ? "invalid JSON: the body is empty" : `invalid JSON: ${(e as Error).message}`;
          return respond({ status: 400, body: { error } }, corsHeaders(request, c.allowedOrigins, keyless));
        }
        if (keyInBody && bodyWriteKey(body) !== bodyKey) return respond(UNAUTHORIZED, publicCors(request, true));
        const address = clientIp(request, socketIp, o.trustProxy);
        if ("error" in address)
          return respond(
            { status: 400, body: { error: address.error } },
            corsHeaders(request, c.allowedOrigins, keyless),
          );
        const result = await ingest({
          connection: c,
          endpoint,
          body,
          facts: { receivedAt, ip: address.ip },
          eventLog,
          limits,
          stats,
          rateLimiter,
        });
        return respond(result, corsHeaders(request, c.allowedOrigins, keyless));
      },
    );
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

  const paths: [string, Endpoint, ("body" | "query")?][] = [
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
  for (const [path, endpoint, keyIn] of paths) {
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
  const routes = app.use(sdk);
  return { name: "http-events", routes, app: routes, stats, limiter: intake.budget, rateLimiter };
}
