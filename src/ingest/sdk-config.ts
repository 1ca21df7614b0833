import { createHash } from "node:crypto";
import { Elysia } from "elysia";
import { Type, type Static } from "@sinclair/typebox";
import type { LoadedConnection } from "../config/loader.ts";
import { corsHeaders, originRefused } from "./cors.ts";
import { UnauthorizedError, writeKeyFromHeader } from "./auth.ts";

/**
 * The settings the browser SDKs fetch before they send anything, so that both work unmodified
 * with only their documented self-hosting options pointed at this node:
 *
 * - analytics.js (`@segment/analytics-next`, `AnalyticsBrowser.load({writeKey, cdnURL})`) fetches
 *   `GET <cdnURL>/v1/projects/<writeKey>/settings` and sends to
 *   `<integrations["Segment.io"].protocol>://<apiHost>/<t|i|p|s|g|a>` (or `/b` when batching).
 * - RudderStack's JS SDK v3 (`load(writeKey, dataPlaneUrl, {configUrl})`) fetches
 *   `GET <configUrl>/sourceConfig/?p=…&v=…&writeKey=…` with Basic auth and validates `source.id`,
 *   `source.config` (an object) and `source.destinations` (an array); a disabled source stops it.
 *
 * Both answers say only what the write key already implies: where to send, and that there are no
 * destinations, middleware, remote plugins or telemetry. No connection name, no other key, nothing
 * about pipelines.
 */

/** The `Segment.io` settings analytics.js reads (plugins/segmentio: apiKey, apiHost without scheme, protocol). */
export const SegmentSettings = Type.Object(
  {
    integrations: Type.Object({
      "Segment.io": Type.Object(
        {
          apiKey: Type.String({ description: "the write key, which analytics.js sends as Basic auth" }),
          apiHost: Type.String({
            description: "host[:port]/v1 of this node as the request reached it, without scheme",
          }),
          protocol: Type.Union([Type.Literal("http"), Type.Literal("https")]),
          unbundledIntegrations: Type.Array(Type.String()),
          addBundledMetadata: Type.Boolean(),
          maybeBundledConfigIds: Type.Object({}),
        },
        { additionalProperties: true },
      ),
    }),
    // sampleRate 0: analytics.js sends no telemetry of its own (it would go to api.segment.io).
    metrics: Type.Object({ sampleRate: Type.Literal(0) }),
    remotePlugins: Type.Array(Type.Unknown(), { maxItems: 0 }),
    enabledMiddleware: Type.Object({}),
    middlewareSettings: Type.Object({}),
    legacyVideoPluginsEnabled: Type.Literal(false),
  },
  {
    additionalProperties: true,
    examples: [
      {
        integrations: {
          "Segment.io": {
            apiKey: "<write key>",
            apiHost: "events.example.com/v1",
            protocol: "https",
            unbundledIntegrations: [],
            addBundledMetadata: true,
            maybeBundledConfigIds: {},
          },
        },
        metrics: { sampleRate: 0 },
        remotePlugins: [],
        enabledMiddleware: {},
        middlewareSettings: {},
        legacyVideoPluginsEnabled: false,
      },
    ],
  },
);
export type SegmentSettings = Static<typeof SegmentSettings>;

/** What RudderStack's configManager validates, plus stats collection off (it would report to RudderStack). */
export const RudderSourceConfig = Type.Object(
  {
    source: Type.Object(
      {
        id: Type.String({ description: "opaque, derived from the write key" }),
        name: Type.String(),
        writeKey: Type.String(),
        workspaceId: Type.String(),
        enabled: Type.Literal(true),
        config: Type.Object({
          statsCollection: Type.Object({
            errors: Type.Object({ enabled: Type.Literal(false) }),
            metrics: Type.Object({ enabled: Type.Literal(false) }),
          }),
        }),
        destinations: Type.Array(Type.Unknown(), { maxItems: 0 }),
      },
      { additionalProperties: true },
    ),
  },
  {
    additionalProperties: true,
    examples: [
      {
        source: {
          id: "tributary-1c9f0a4b7e2d3f60",
          name: "tributary",
          writeKey: "<write key>",
          workspaceId: "tributary",
          enabled: true,
          config: { statsCollection: { errors: { enabled: false }, metrics: { enabled: false } } },
          destinations: [],
        },
      },
    ],
  },
);
export type RudderSourceConfig = Static<typeof RudderSourceConfig>;

/** The query RudderStack sends (`p`, `v`, `build`, `lockIntegrationsVersion`… are accepted and ignored). */
export const SourceConfigQuery = Type.Object(
  { writeKey: Type.Optional(Type.String({ description: "used when there is no Authorization header" })) },
  { additionalProperties: true },
);

/** host[:port], a bracketed IPv6 address, nothing else: it is copied into the settings. */
const HOST = /^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252}))(?::\d{1,5})?$/;

/**
 * This node's host and scheme as the browser reached it: the Host header and the request's scheme,
 * or X-Forwarded-Host / X-Forwarded-Proto (first value) when the operator says a proxy is in front.
 */
export function publicOrigin(
  request: Request,
  trustProxy: boolean,
): { host: string; protocol: "http" | "https" } | { error: string } {
  let protocol: "http" | "https" = new URL(request.url).protocol === "https:" ? "https" : "http";
  let host = request.headers.get("host") ?? new URL(request.url).host;
  if (trustProxy) {
    const proto = request.headers.get("x-forwarded-proto")?.split(",")[0]?.trim().toLowerCase();
    if (proto === "http" || proto === "https") protocol = proto;
    const fwdHost = request.headers.get("x-forwarded-host")?.split(",")[0]?.trim();
    if (fwdHost) host = fwdHost;
  }
  if (!HOST.test(host))
    return {
      error: `the ${trustProxy && request.headers.has("x-forwarded-host") ? "X-Forwarded-Host" : "Host"} header is not a host name`,
    };
  return { host, protocol };
}

export function segmentSettings(writeKey: string, host: string, protocol: "http" | "https"): SegmentSettings {
  return {
    integrations: {
      "Segment.io": {
        apiKey: writeKey,
        apiHost: `${host}/v1`,
        protocol,
        unbundledIntegrations: [],
        addBundledMetadata: true,
        maybeBundledConfigIds: {},
      },
    },
    metrics: { sampleRate: 0 },
    remotePlugins: [],
    enabledMiddleware: {},
    middlewareSettings: {},
    legacyVideoPluginsEnabled: false,
  };
}

export function rudderSourceConfig(writeKey: string): RudderSourceConfig {
  // A stable id per key that says nothing the key does not (RudderStack only needs one).
  const id = `tributary-${createHash("sha256").update(writeKey).digest("hex").slice(0, 16)}`;
  return {
    source: {
      id,
      name: "tributary",
      writeKey,
      workspaceId: "tributary",
      enabled: true,
      config: { statsCollection: { errors: { enabled: false }, metrics: { enabled: false } } },
      destinations: [],
    },
  };
}

export interface SdkConfigContext {
  lookup(key: string | undefined): LoadedConnection | undefined;
  /** CORS for an answer given before a connection is known: an origin some connection allows. */
  publicCors(request: Request): Record<string, string>;
  preflight(request: Request, methods: string): Response;
  /** The 403 a page can read, logged at warn with the connection and origin. */
  refuseOrigin(request: Request, connection: string, origin: string, credentials: boolean): Response;
  trustProxy: boolean;
}

const json = (status: number, body: unknown, headers: Record<string, string>) =>
  new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", "Cache-Control": "no-cache", ...headers },
  });

/** `GET /v1/projects/:writeKey/settings` and `GET /sourceConfig/` as an Elysia plugin. */
export function sdkConfigRoutes(x: SdkConfigContext) {
  const settings = (request: Request, writeKey: string) => {
    const c = x.lookup(writeKey);
    if (!c) return json(404, { error: "no source for this write key" }, x.publicCors(request));
    const refused = originRefused(request, c.allowedOrigins);
    if (refused !== undefined) return x.refuseOrigin(request, c.connection, refused, false);
    const where = publicOrigin(request, x.trustProxy);
    if ("error" in where) return json(400, { error: where.error }, corsHeaders(request, c.allowedOrigins));
    return json(200, segmentSettings(writeKey, where.host, where.protocol), corsHeaders(request, c.allowedOrigins));
  };

  const sourceConfig = (request: Request) => {
    const auth = request.headers.get("authorization");
    const key =
      auth !== null ? writeKeyFromHeader(auth) : (new URL(request.url).searchParams.get("writeKey") ?? undefined);
    const c = x.lookup(key);
    if (!c || key === undefined) {
      const e = new UnauthorizedError();
      return json(e.status, { error: e.message }, { ...e.headers, ...x.publicCors(request) });
    }
    const refused = originRefused(request, c.allowedOrigins);
    if (refused !== undefined) return x.refuseOrigin(request, c.connection, refused, false);
    return json(200, rudderSourceConfig(key), corsHeaders(request, c.allowedOrigins));
  };

  return (
    new Elysia({ name: "sdk-config" })
      // Elysia decodes the path parameter; the key is looked up, never logged (the route is logged by its pattern).
      .get("/v1/projects/:writeKey/settings", ({ request, params }) => settings(request, params.writeKey))
      .options("/v1/projects/:writeKey/settings", ({ request }) => x.preflight(request, "GET, OPTIONS"))
      .get("/sourceConfig", ({ request }) => sourceConfig(request))
      .get("/sourceConfig/", ({ request }) => sourceConfig(request))
      .options("/sourceConfig", ({ request }) => x.preflight(request, "GET, OPTIONS"))
      .options("/sourceConfig/", ({ request }) => x.preflight(request, "GET, OPTIONS"))
  );
}
