import { Type, type TSchema } from "@sinclair/typebox";
import { ReplayRequest } from "./replay-routes.ts";
import { ForgetAnswer } from "./user-routes.ts";
import {
  BaseEvent,
  BatchEnvelope,
  EVENT_RULES,
  EVENT_TYPES,
  Identity,
  type EventType,
} from "../ingest/event-schema.ts";
import { RudderSourceConfig, SegmentSettings } from "../ingest/sdk-config.ts";

/**
 * GET /openapi.json, built from the TypeBox schemas that validate requests (event-schema.ts), so
 * the published description cannot drift from what the node accepts. Response shapes are TypeBox
 * too; the test suite checks live answers against them and every route against `paths`.
 */

const example = (value: unknown) => ({ examples: [value] });

export const eventOf = (type: EventType): TSchema => {
  const rule = EVENT_RULES[type];
  return Type.Intersect([BaseEvent, ...(rule ? [rule] : []), Identity]);
};

const EXAMPLES: Record<EventType, Record<string, unknown>> = {
  track: {
    type: "track",
    event: "Order Completed",
    userId: "u1",
    properties: { total: 9.5 },
    timestamp: "2025-10-20T16:15:23.992Z",
  },
  identify: { type: "identify", userId: "u1", traits: { email: "ada@example.com" } },
  page: { type: "page", anonymousId: "a1", name: "Pricing", properties: { url: "https://example.com/pricing" } },
  screen: { type: "screen", userId: "u1", name: "Home" },
  group: { type: "group", userId: "u1", groupId: "acme" },
  alias: { type: "alias", userId: "u1", previousId: "a1" },
};

export const AnyEvent = Type.Union(EVENT_TYPES.map(eventOf), {
  description: "A Segment-spec event",
  ...example(EXAMPLES.track),
});

export const ErrorBody = Type.Object(
  { error: Type.String() },
  { ...example({ error: "invalid JSON: Unexpected end of JSON input" }) },
);

export const IngestAnswer = Type.Object(
  {
    accepted: Type.Integer({
      minimum: 0,
      description: "events accepted (redeliveries of stored messageIds count, and are stored once)",
    }),
    rejected: Type.Optional(
      Type.Array(
        Type.Object({
          index: Type.Integer({ minimum: 0 }),
          messageId: Type.Optional(Type.String()),
          error: Type.String(),
        }),
      ),
    ),
  },
  {
    additionalProperties: true,
    ...example({ accepted: 1, rejected: [{ index: 1, error: 'track event needs a non-empty "event"' }] }),
  },
);

export const WebhookAnswer = Type.Object(
  {
    accepted: Type.Integer({ minimum: 0 }),
    rows: Type.Integer({ minimum: 0 }),
    duplicate: Type.Optional(Type.Boolean()),
    events: Type.Optional(Type.Object({}, { additionalProperties: true })),
  },
  { additionalProperties: true, ...example({ accepted: 1, rows: 1 }) },
);

const PipelineSnapshot = Type.Object({
  connection: Type.String(),
  pipeline: Type.String(),
  import: Type.Union([Type.Literal("events"), Type.Literal("users"), Type.Literal("raw"), Type.Literal("export")], {
    description: "the pipeline's kind: what it imports, or `export` for an export pipeline",
  }),
  received: Type.Integer(),
  filteredOut: Type.Integer(),
  consentFailed: Type.Integer(),
  transformed: Type.Integer(),
  failed: Type.Integer(),
  loaded: Type.Integer(),
  deadLettered: Type.Integer(),
  forgotten: Type.Optional(
    Type.Integer({ description: "events of forgotten users this pipeline dropped (`npm run forget`)" }),
  ),
  deadLetters: Type.Integer(),
  lag: Type.Union([Type.Integer(), Type.Null()]),
  lastLoadAt: Type.Union([Type.String(), Type.Null()]),
  lastErrors: Type.Array(
    Type.Object({ at: Type.String(), messageId: Type.Optional(Type.String()), error: Type.String() }),
  ),
  export: Type.Optional(
    Type.Object(
      {
        destination: Type.Object({ type: Type.String(), url: Type.String() }),
        role: Type.Union([Type.Literal("active"), Type.Literal("standby")]),
        sent: Type.Integer(),
        retried: Type.Integer(),
        failed: Type.Integer(),
        deadLettered: Type.Integer(),
        inFlight: Type.Integer(),
        queued: Type.Integer(),
        lastSentAt: Type.Union([Type.String(), Type.Null()]),
        latencyByStatus: Type.Record(
          Type.String(),
          Type.Object({ count: Type.Integer(), meanMs: Type.Number(), maxMs: Type.Number() }),
        ),
      },
      { description: "an export pipeline's sender (PRODUCT.md §7); the URL without credentials" },
    ),
  ),
});
export const PipelinesAnswer = Type.Object({ pipelines: Type.Array(PipelineSnapshot) });

export const ConnectionsAnswer = Type.Object({
  connections: Type.Array(
    Type.Object({
      connection: Type.String(),
      source: Type.String(),
      pipelines: Type.Array(
        Type.Object({
          name: Type.String(),
          import: Type.Optional(Type.String()),
          export: Type.Optional(Type.String()),
          enabled: Type.Boolean(),
        }),
      ),
    }),
  ),
});

export const EventDetail = Type.Object({
  event: Type.Union([Type.Object({}, { additionalProperties: true }), Type.Null()]),
  outcomes: Type.Array(
    Type.Object({
      pipeline: Type.String(),
      outcome: Type.Union(["kept", "filtered", "transformed", "failed", "loaded"].map((o) => Type.Literal(o))),
      reason: Type.Optional(Type.String()),
      at: Type.String(),
    }),
  ),
});

export const VersionAnswer = Type.Object({ name: Type.String(), version: Type.String(), bun: Type.String() });
/** Without the admin token only `ok`; with it, what each part answered and the configuration's state. */
export const ReadyAnswer = Type.Object(
  {
    ok: Type.Boolean(),
    nats: Type.Optional(Type.Boolean()),
    clickhouse: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  },
  { additionalProperties: true },
);

const json = (schema: TSchema, description: string) => ({ description, content: { "application/json": { schema } } });
const err = (description: string) => json(ErrorBody, description);
const writeKey = [{ bearerWriteKey: [] }, { basicWriteKey: [] }];
const admin = [{ adminToken: [] }];
const ingestAnswers = {
  "200": json(IngestAnswer, "every valid event is durable in JetStream; invalid ones are listed in `rejected`"),
  "400": err("not JSON, wrong shape, or no valid event"),
  "401": err("missing, malformed or unknown write key (one answer for all three)"),
  "403": err("a browser Origin the connection's allowedOrigins does not list"),
  "413": err("body over the size limit after decompression, or too many events"),
  "429": err("overloaded or over the connection's rate limit; see Retry-After"),
  "503": err(
    "JetStream could not confirm the write, the stream is full, or the body did not arrive in time; see Retry-After",
  ),
};

/** The OpenAPI 3.1 document. */
export function openApiDocument(version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const ingest = (path: string, summary: string, schema: TSchema) => {
    paths[path] = {
      post: {
        summary,
        security: writeKey,
        requestBody: { required: true, content: { "application/json": { schema } } },
        responses: ingestAnswers,
      },
      options: { summary: "CORS preflight", security: [], responses: { "204": { description: "CORS headers" } } },
    };
  };
  ingest(
    "/v1/events",
    "One event, or an array of events",
    Type.Union([AnyEvent, Type.Array(AnyEvent)], example([EXAMPLES.track, EXAMPLES.identify])),
  );
  ingest(
    "/v1/batch",
    "A batch envelope, as the Segment and RudderStack SDKs send",
    Type.Intersect(
      [BatchEnvelope, Type.Object({ batch: Type.Array(AnyEvent) })],
      example({ batch: [EXAMPLES.track], sentAt: "2025-10-20T16:15:24.327Z" }),
    ),
  );
  for (const t of EVENT_TYPES)
    ingest(`/v1/${t}`, `One ${t} event (type comes from the path)`, { ...eventOf(t), ...example(EXAMPLES[t]) });
  // analytics.js (Segment's browser SDK) posts text/plain JSON to the type's first letter, batches to /v1/b.
  for (const t of EVENT_TYPES)
    ingest(`/v1/${t[0]}`, `One ${t} event, as analytics.js sends it (same as /v1/${t})`, {
      ...eventOf(t),
      ...example(EXAMPLES[t]),
    });
  ingest(
    "/v1/b",
    "A batch, as analytics.js sends it (same as /v1/batch)",
    Type.Intersect(
      [BatchEnvelope, Type.Object({ batch: Type.Array(AnyEvent) })],
      example({ batch: [EXAMPLES.track], sentAt: "2025-10-20T16:15:24.327Z" }),
    ),
  );
  ingest(
    "/beacon/v1/batch",
    "A batch sent with navigator.sendBeacon (RudderStack's BeaconQueue): the key in the `writeKey` query parameter, at most 1 MiB",
    Type.Intersect(
      [BatchEnvelope, Type.Object({ batch: Type.Array(AnyEvent) })],
      example({ batch: [EXAMPLES.track], sentAt: "2025-10-20T16:15:24.327Z" }),
    ),
  );
  (paths["/beacon/v1/batch"]!.post as Record<string, unknown>).security = [];
  (paths["/beacon/v1/batch"]!.post as Record<string, unknown>).parameters = [
    { name: "writeKey", in: "query", required: true, schema: { type: "string" } },
  ];
  const sdkGet = (summary: string, answer: TSchema, extra: Record<string, unknown>) => ({
    get: {
      summary,
      security: [],
      ...extra,
      responses: {
        "200": json(answer, "settings"),
        "403": err(
          "a browser Origin the connection's allowedOrigins does not list (with CORS headers, so the page can read it)",
        ),
      },
    },
    options: { summary: "CORS preflight", security: [], responses: { "204": { description: "CORS headers" } } },
  });
  paths["/v1/projects/{writeKey}/settings"] = sdkGet(
    "analytics.js settings (`cdnURL` pointed at this node): sends events to this node, nothing else",
    SegmentSettings,
    {
      parameters: [{ name: "writeKey", in: "path", required: true, schema: { type: "string" } }],
    },
  );
  (paths["/v1/projects/{writeKey}/settings"]!.get as { responses: Record<string, unknown> }).responses["404"] =
    err("unknown write key");
  for (const p of ["/sourceConfig", "/sourceConfig/"]) {
    paths[p] = sdkGet(
      "RudderStack JS SDK v3 source config (`configUrl` pointed at this node): enabled, no destinations",
      RudderSourceConfig,
      {
        security: [{ basicWriteKey: [] }, {}],
        parameters: [
          {
            name: "writeKey",
            in: "query",
            required: false,
            schema: { type: "string" },
            description: "used without an Authorization header",
          },
        ],
      },
    );
    (paths[p]!.get as { responses: Record<string, unknown> }).responses["401"] = err("missing or unknown write key");
  }
  paths["/v1/webhooks/{connection}"] = {
    post: {
      summary: "A raw webhook delivery (any JSON, or text) for a `source: raw` connection",
      parameters: [{ name: "connection", in: "path", required: true, schema: { type: "string" } }],
      security: [],
      requestBody: {
        required: true,
        content: { "application/json": { schema: {} }, "text/plain": { schema: { type: "string" } } },
      },
      responses: {
        "200": json(WebhookAnswer, "stored (or a redelivery, stored once)"),
        "400": err("the body does not match the connection's `body` format"),
        "401": err("the connection's check failed"),
        "404": err("no raw connection by that name"),
        "413": err("body over the limit"),
        "503": err("JetStream could not confirm the write"),
      },
    },
  };
  const get = (
    path: string,
    summary: string,
    responses: Record<string, unknown>,
    security: unknown[] = admin,
    parameters?: unknown[],
  ) => {
    paths[path] = {
      get: {
        summary,
        security,
        ...(parameters && { parameters }),
        responses: {
          ...responses,
          ...(security.length && { "401": err("no or wrong admin token"), "403": err("admin API disabled") }),
        },
      },
    };
  };
  const conn = { name: "connection", in: "path", required: true, schema: { type: "string" } };
  get("/healthz", "The process is up", { "200": json(Type.Object({ ok: Type.Boolean() }), "up") }, []);
  get(
    "/readyz",
    "NATS and ClickHouse reachable, pipelines running (details only with the admin token)",
    { "200": json(ReadyAnswer, "ready"), "503": json(ReadyAnswer, "not ready") },
    [],
  );
  get("/version", "Which Tributary this node runs", { "200": json(VersionAnswer, "version") }, []);
  get("/openapi.json", "This document", { "200": { description: "OpenAPI 3.1" } }, []);
  get(
    "/debugger",
    "The Event debugger page (asks for the admin token itself)",
    { "200": { description: "HTML", content: { "text/html": {} } } },
    [],
  );
  get(
    "/debugger/auth",
    "Whether the debugger page must ask for the admin token: none (TRIBUTARY_DEV_ADMIN admits this request), required, or off",
    {
      "200": json(
        Type.Object({
          token: Type.Union([Type.Literal("none"), Type.Literal("required"), Type.Literal("off")]),
          error: Type.Optional(Type.String()),
        }),
        "the page's token mode",
      ),
    },
    [],
  );
  get(
    "/debugger/{asset}",
    "The debugger page's script and style sheet",
    { "200": { description: "page.js or page.css" }, "404": err("no such asset") },
    [],
    [{ name: "asset", in: "path", required: true, schema: { type: "string" } }],
  );
  get("/v1/connections", "Connections and their pipelines", { "200": json(ConnectionsAnswer, "connections") });
  get(
    "/v1/connections/{connection}/events/live",
    "Server-Sent Events: the last 100 events, then live ones; Last-Event-ID resumes",
    { "200": { description: "text/event-stream", content: { "text/event-stream": {} } } },
    admin,
    [
      conn,
      {
        name: "sample",
        in: "query",
        required: false,
        schema: { type: "integer", minimum: 1 },
        description: "at most this many events a second; the rest are counted in `dropped` messages",
      },
      { name: "Last-Event-ID", in: "header", required: false, schema: { type: "string" } },
    ],
  );
  get(
    "/v1/connections/{connection}/events/{messageId}",
    "One recent event and what each pipeline did with it",
    { "200": json(EventDetail, "event and outcomes") },
    admin,
    [conn, { name: "messageId", in: "path", required: true, schema: { type: "string" } }],
  );
  get("/v1/pipelines", "Every pipeline's counts, consumer lag and last errors", {
    "200": json(PipelinesAnswer, "pipelines"),
  });
  const replayJob = Type.Object({
    id: Type.String(),
    connection: Type.String(),
    pipeline: Type.String(),
    startedAt: Type.String(),
    progress: Type.Optional(Type.Object({}, { additionalProperties: true })),
    error: Type.Optional(Type.String()),
  });
  paths["/v1/pipelines/{name}/replay"] = {
    post: {
      summary: "Re-run a pipeline over events still in the stream (backfill), exactly once as seen by queries",
      security: admin,
      parameters: [{ name: "name", in: "path", required: true, schema: { type: "string" } }],
      requestBody: { required: false, content: { "application/json": { schema: ReplayRequest } } },
      responses: {
        "202": json(Type.Object({ id: Type.String(), status: Type.String() }), "started; follow it at `status`"),
        "400": err("bad request body, or the name is ambiguous"),
        "401": err("no or wrong admin token"),
        "403": err("admin API disabled"),
        "404": err("no such pipeline"),
        "503": err("ClickHouse not reachable yet"),
      },
    },
  };
  paths["/v1/users/{id}"] = {
    delete: {
      summary:
        "Forget a user everywhere (PRODUCT.md §8): the profile, its identities, KV entries and events rows; their ids are kept as hashed tombstones so replays and late events bring nothing back",
      security: admin,
      parameters: [
        {
          name: "id",
          in: "path",
          required: true,
          description: "a userId, an anonymousId or an identifier value (such as an email)",
          schema: { type: "string" },
        },
      ],
      responses: {
        "200": json(ForgetAnswer, "what was removed"),
        "400": err("the id is empty or longer than 1,024 bytes"),
        "401": err("no or wrong admin token"),
        "403": err("admin API disabled"),
        "404": err("no profile, identity or event has that id"),
        "409": err("too many profiles hold that identifier value: forget them by userId or anonymousId"),
        "503": err("ClickHouse or NATS not reachable; nothing or part was removed, retry"),
      },
    },
  };
  get("/v1/replays", "Replays started on this node, with progress", {
    "200": json(Type.Object({ replays: Type.Array(replayJob) }), "replays"),
  });
  get(
    "/v1/replays/{id}",
    "One replay's progress",
    { "200": json(replayJob, "replay"), "404": err("no such replay") },
    admin,
    [{ name: "id", in: "path", required: true, schema: { type: "string" } }],
  );
  get("/metrics", "Prometheus metrics", {
    "200": { description: "text/plain; version=0.0.4", content: { "text/plain": {} } },
  });
  return {
    openapi: "3.1.0",
    info: {
      title: "Tributary",
      version,
      description:
        "Event ingestion: HTTP in, NATS JetStream, pipelines into ClickHouse. Connections, write keys and pipelines are configured by the files of pipelines/: see docs/configuration.md in the repository (generated from the schemas that validate them).",
    },
    paths,
    components: {
      securitySchemes: {
        bearerWriteKey: { type: "http", scheme: "bearer", description: "a connection's write key" },
        basicWriteKey: {
          type: "http",
          scheme: "basic",
          description: "the write key as user name, empty password (Segment and RudderStack SDKs)",
        },
        adminToken: { type: "http", scheme: "bearer", description: "TRIBUTARY_ADMIN_TOKEN" },
      },
    },
  };
}
