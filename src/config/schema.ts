import { Type, type Static, type TLiteral } from "@sinclair/typebox";
import { Destination } from "./destination.ts";

/**
 * The schema of one file in `pipelines/`: the single source of truth for validation, types and the
 * configuration reference. Every `description`, `default` and `examples` here is published in
 * docs/configuration.md by `npm run docs:config` (scripts/config-reference.ts); a test fails when
 * that file is not what the schemas generate, so write them for a reader who has only the docs.
 */

/** A literal that documents itself: the reference lists each allowed value with its meaning. */
const Value = <T extends string>(value: T, description: string): TLiteral<T> => Type.Literal(value, { description });

/** One secret, or several: any of them is accepted, so a secret can be rotated without downtime. */
const Secrets = (description: string) =>
  Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })], {
    description: `${description} One string, or a list: any of them is accepted (rotation). Write \`"\${NAME}"\` to take it from the environment.`,
    examples: ["${WEBHOOK_SECRET}"],
  });

export const ConnectionName = Type.String({
  pattern: "^[a-z0-9_-]{1,64}$",
  description:
    "The connection's name, unique across files: lowercase letters, digits, `_` and `-`, at most 64. It names the NATS subjects (`tributary.events.<connection>.<shard>`), the raw webhook URL (`/v1/webhooks/<connection>`) and the `connection` column in ClickHouse.",
  examples: ["website"],
});

export const Transform = Type.Union(
  [
    Type.Object(
      {
        mapping: Type.Record(Type.String(), Type.String(), {
          description:
            "Visual mapping: Customer Model property → JSONata expression over the event. Every key must be a property of the Customer Model (`check` and the node refuse one that is not). A property whose expression yields nothing is left as it was on the profile.",
          examples: [{ email: "$lowercase(traits.email)", plan: "traits.plan" }],
        }),
      },
      { additionalProperties: false },
    ),
    Type.Object(
      {
        jsonata: Type.String({
          description: "One JSONata expression returning the object of Customer Model properties.",
          examples: ['{"email": $lowercase(traits.email), "plan": traits.plan}'],
        }),
      },
      { additionalProperties: false },
    ),
    Type.Object(
      {
        javascript: Type.String({
          description:
            "JavaScript defining `function transform(event) { return {…} }`, run in a QuickJS sandbox (no file system, network or host objects; time and memory limits per call).",
          examples: ["function transform(event) { return { email: event.traits.email } }"],
        }),
      },
      { additionalProperties: false },
    ),
    Type.Object(
      {
        python: Type.String({
          description:
            "Python defining `def transform(event): return {…}`, run in a Pyodide sandbox with the same limits as JavaScript.",
          examples: ['def transform(event): return {"email": event["traits"]["email"]}'],
        }),
      },
      { additionalProperties: false },
    ),
  ],
  {
    description:
      "`import: users` only, and required there: how an event becomes Customer Model properties. Exactly one of `mapping`, `jsonata`, `javascript`, `python`. The result is checked against the Customer Model: an unknown property or a wrong type fails that event (dead-lettered, listed with its messageId), never silently. `null` clears a property; a property left out keeps its value. `export` pipelines may have one too (optional): its output is the body sent for each event, with no Customer Model check; an event whose transformation fails is dead-lettered.",
  },
);

export const Pipeline = Type.Object(
  {
    name: Type.String({
      minLength: 1,
      maxLength: 128,
      description:
        "The pipeline's name, unique within its connection. It names the JetStream consumer, the `pipeline` column and the dead-letter subject.",
      examples: ["all-track-events"],
    }),
    import: Type.Optional(
      Type.Union(
        [
          Value("events", "One row per kept event in `tributary.events`, as the event is (no transform)."),
          Value(
            "users",
            "Profiles in `tributary.users`: each kept event's `transform` output updates its user's profile.",
          ),
        ],
        { description: "What the pipeline loads into ClickHouse. Exactly one of `import` and `export`." },
      ),
    ),
    export: Type.Optional(
      Type.Union(
        [
          Value(
            "events",
            "Each kept event (or its `transform` output) is sent to `destination`, each user's events in stream order.",
          ),
        ],
        { description: "What the pipeline sends to its `destination`. Exactly one of `import` and `export`." },
      ),
    ),
    destination: Type.Optional(Destination),
    filter: Type.Optional(
      Type.String({
        minLength: 1,
        description:
          'JSONata over the event; `true` keeps it. Absent: `import: events` keeps every event, `import: users` keeps `type in ["identify", "alias"] or $exists(traits)`. One that does not compile is a configuration error; one that fails at run time fails that event only.',
        examples: ['type = "track" and event = "Order Completed"'],
      }),
    ),
    consents: Type.Optional(
      Type.Array(Type.String({ minLength: 1 }), {
        description:
          'Consent purposes an event must grant: only events whose `context.consents.<purpose>` is `true` for each are kept; the others are counted as "consent failed".',
        examples: [["analytics"]],
      }),
    ),
    transform: Type.Optional(Transform),
    enabled: Type.Optional(
      Type.Boolean({
        default: true,
        description:
          "`false` stops the pipeline; its consumer stays, so its events wait in the stream and re-enabling resumes where it stopped.",
      }),
    ),
  },
  { additionalProperties: false },
);
export type Pipeline = Static<typeof Pipeline>;

const HmacCheck = Type.Object(
  {
    hmac: Type.Object(
      {
        header: Type.String({
          minLength: 1,
          description: "The request header carrying the signature.",
          examples: ["X-Shopify-Hmac-Sha256"],
        }),
        algorithm: Type.Union(
          [Value("sha1", "HMAC-SHA1"), Value("sha256", "HMAC-SHA256"), Value("sha512", "HMAC-SHA512")],
          { description: "The HMAC's hash." },
        ),
        encoding: Type.Union([Value("hex", "hexadecimal"), Value("base64", "base64")], {
          description: "How the header writes the signature.",
        }),
        prefix: Type.Optional(
          Type.String({
            description: "Text before the signature in the header, removed before comparing.",
            examples: ["sha256="],
          }),
        ),
        secret: Secrets("The HMAC key."),
      },
      {
        additionalProperties: false,
        description: "A signature of the raw request body (after gzip/deflate decoding), compared in constant time.",
      },
    ),
  },
  { additionalProperties: false },
);
const HeaderCheck = Type.Object(
  {
    header: Type.String({
      minLength: 1,
      description: "The request header carrying the shared secret.",
      examples: ["X-Api-Key"],
    }),
    equals: Secrets("The value the header must have, compared in constant time."),
  },
  { additionalProperties: false },
);

export const Connection = Type.Object(
  {
    connection: ConnectionName,
    source: Type.Union(
      [
        Value(
          "webhook",
          "Events POSTed with a write key to `/v1/events`, `/v1/batch`, `/v1/track`…: curl, any language, Segment's Webhooks (Actions) destination, RudderStack's Webhook destination.",
        ),
        Value(
          "segment",
          "Segment SDKs pointed at Tributary (same endpoints and write keys as `webhook`; the name says who sends).",
        ),
        Value("rudderstack", "RudderStack SDKs pointed at Tributary (same endpoints and write keys as `webhook`)."),
        Value(
          "raw",
          "Any payload (Stripe, GitHub, Shopify…) at `POST /v1/webhooks/<connection>`, authenticated by `check` instead of write keys, stored in its own table.",
        ),
      ],
      { description: "Who sends to this connection, and so how requests are authenticated." },
    ),
    writeKeys: Type.Optional(
      Type.Array(Type.String({ minLength: 8 }), {
        minItems: 1,
        description:
          "Required for every source but `raw`. The keys senders authenticate with (`Authorization: Bearer <key>`, or Basic with the key as user name, as the SDKs send). Each key belongs to one connection; several keys allow rotation. Keys are public (browsers carry them): `allowedOrigins` limits which pages may use them.",
        examples: [["${WEBSITE_WRITE_KEY}"]],
      }),
    ),
    allowedOrigins: Type.Optional(
      Type.Array(Type.String({ minLength: 1 }), {
        description:
          "Browser origins (`scheme://host[:port]`) allowed to send with this connection's keys; `*` allows all. A request whose `Origin` is not listed is refused with 403, carrying CORS headers and `reason: origin_not_allowed` so the page can read why; the node logs the refusal at warn (never the key). Requests without `Origin` (server-side senders) are unaffected. Absent: every origin is allowed (write keys are public, so this guards pages, not access; list your sites' origins in production).",
        examples: [["https://www.example.com", "http://localhost:3000"]],
      }),
    ),
    ip: Type.Optional(
      Type.Union(
        [
          Value("keep", "Store `context.ip` as resolved."),
          Value("mask24", "Keep a /24 of IPv4 and a /48 of IPv6."),
          Value("drop", "Remove the address."),
        ],
        {
          default: "keep",
          description:
            "What happens to `context.ip` before the event is stored (so the stream, not only the warehouse, is protected).",
        },
      ),
    ),
    rateLimit: Type.Optional(
      Type.Object(
        {
          eventsPerMinute: Type.Number({
            exclusiveMinimum: 0,
            description: "Refill rate of the token bucket, in events per minute.",
            examples: [6000],
          }),
          burst: Type.Optional(
            Type.Number({
              minimum: 1,
              description:
                "Most events the bucket holds. A request with more events than this always gets 429. Default: `eventsPerMinute`.",
              examples: [1000],
            }),
          ),
        },
        {
          additionalProperties: false,
          description:
            "A token bucket per node, counted in valid events: a request that does not fit gets 429 with `Retry-After` and nothing of it is stored. With N nodes the effective limit is N times this. Absent: no limit.",
        },
      ),
    ),
    pipelines: Type.Optional(
      Type.Array(Pipeline, {
        description: "What is loaded into ClickHouse from this connection's events; see [Pipelines](#pipelines).",
      }),
    ),
    body: Type.Optional(
      Type.Union(
        [
          Value("json", "One row per JSON document; newline-separated documents give one row each."),
          Value("json-array", "One row per element of a top-level JSON array."),
          Value("text", "The body as it is, one row."),
        ],
        {
          default: "json",
          description:
            "`source: raw` only. How a request body becomes rows. A request is stored whole or not at all: one bad document is a 400.",
        },
      ),
    ),
    headers: Type.Optional(
      Type.Union(
        [
          Value(
            "all",
            "Every header but `authorization`, `cookie`, `proxy-authorization` and the check's secret header.",
          ),
          Type.Array(Type.String({ minLength: 1 })),
        ],
        {
          description:
            "`source: raw` only. Which request headers to store in the `headers` column: `all`, or a list of names. Absent: none.",
          examples: [["X-GitHub-Event", "X-GitHub-Delivery"]],
        },
      ),
    ),
    check: Type.Optional(
      Type.Union(
        [
          Value("github", "`X-Hub-Signature-256`: `sha256=` and hex HMAC-SHA256 of the body, keyed by `secret`."),
          Value("segment", "`X-Signature`: hex HMAC-SHA1 of the body, keyed by `secret` (see `segmentBatchFallback`)."),
          Value(
            "stripe",
            "`Stripe-Signature` (`t=…,v1=…`, HMAC-SHA256 of `t.body`) keyed by `secret`; timestamps more than 300 s away are refused.",
          ),
          HeaderCheck,
          HmacCheck,
        ],
        {
          description:
            "`source: raw` only. How a request is authenticated; a failure is a 401. A preset (`github`, `segment`, `stripe`, which take the key from `secret`), `{header, equals}` (a shared secret) or `{hmac: {…}}` (a signature). A raw connection without `check` must say `insecure: true`.",
        },
      ),
    ),
    secret: Type.Optional(Secrets("`source: raw` only: the key of a preset `check`.")),
    segmentBatchFallback: Type.Optional(
      Type.Boolean({
        default: false,
        description:
          "`check: segment` only: also accept a JSON array whose `X-Signature` covers only its first event (Segment's batched Webhooks deliveries). Events after the first are then not authenticated, and a captured signed body can be replayed with any events after it. Prefer Segment's `X-Segment-Signature` header, which covers the whole body.",
      }),
    ),
    insecure: Type.Optional(
      Type.Boolean({
        default: false,
        description: "`source: raw` only: `true` accepts requests without any `check` (start-up warns about it).",
      }),
    ),
    dedup: Type.Optional(
      Type.Union(
        [
          Type.Object(
            {
              header: Type.String({
                minLength: 1,
                description: "The request header naming the delivery.",
                examples: ["X-GitHub-Delivery"],
              }),
            },
            { additionalProperties: false },
          ),
          Type.Object(
            {
              jsonata: Type.String({
                minLength: 1,
                description: "JSONata over the parsed body giving the delivery id.",
                examples: ["id"],
              }),
            },
            { additionalProperties: false },
          ),
        ],
        {
          description:
            '`source: raw` only. The delivery id: a redelivery with the same id is answered 200 (`"duplicate": true`) and stored once. Absent: a hash of the body. Ids over 80 characters are stored as `id-sha256:` and their SHA-256.',
        },
      ),
    ),
    table: Type.Optional(
      Type.String({
        pattern: "^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description:
          "`source: raw` only. The ClickHouse table the rows land in (not `events` or `users`). Default: the connection's name.",
        examples: ["github_events"],
      }),
    ),
    events: Type.Optional(
      Type.String({
        minLength: 1,
        description:
          "`source: raw` only. JSONata turning each payload into zero or more events (an object or an array), which go through this connection's `pipelines` like any other. Their messageIds derive from the delivery id, so a redelivery does not double them.",
        examples: [
          'type = "invoice.paid" ? {"type": "track", "event": "Invoice Paid", "userId": data.object.customer}',
        ],
      }),
    ),
  },
  { additionalProperties: false },
);
export type Connection = Static<typeof Connection>;

export const PropertyType = Type.Union(
  [
    Value("string", "Text: `Nullable(String)`."),
    Value("int", "A safe integer (±2^53−1): `Nullable(Int64)`."),
    Value("float", "A finite number: `Nullable(Float64)`."),
    Value("boolean", "`true` or `false`: `Nullable(Bool)` (`UInt8` on servers older than Bool)."),
    Value(
      "datetime",
      "ISO 8601 text (UTC unless it has an offset) or epoch milliseconds; a real calendar date and time within what the column stores (1900-01-01 to 2299-12-31 on ClickHouse 22.8 and later): `Nullable(DateTime64(3, 'UTC'))` (`UInt64` epoch milliseconds before ClickHouse 20.1).",
    ),
    Value("json", "Any JSON value, stored as its JSON text: `Nullable(String)`."),
    Value("array(string)", "A list of text: `Array(String)`. `null` or absent clears to an empty list."),
    Value("array(int)", "A list of integers: `Array(Int64)`."),
    Value("array(float)", "A list of numbers: `Array(Float64)`."),
    Value("array(boolean)", "A list of booleans: `Array(Bool)`."),
    Value("array(datetime)", "A list of datetimes: `Array(DateTime64(3, 'UTC'))`."),
  ],
  { description: "A property's type, which is its column's type." },
);

export const CustomerModelFile = Type.Object(
  {
    customerModel: Type.Record(Type.String({ pattern: "^[a-z_][a-z0-9_]{0,63}$" }), PropertyType, {
      // Property names become column names: refuse what the pattern does not allow.
      additionalProperties: false,
      description:
        "Property name → type. A name is lowercase letters, digits and `_`, starting with a letter or `_`, at most 64. Each property is a typed column of `tributary.users`; adding one adds the column at the next reload. Several files may declare properties; they are merged.",
      examples: [{ email: "string", plan: "string", age: "int", signed_up_at: "datetime" }],
    }),
    migrate: Type.Optional(
      Type.Boolean({
        default: false,
        description:
          "Allows removing and retyping properties (dropping or converting their columns) at the next reload. Without it such a change is refused, naming the property, and the last good model keeps running.",
      }),
    ),
    identifiers: Type.Optional(
      Type.Array(Type.String({ pattern: "^[a-z_][a-z0-9_]{0,63}$" }), {
        uniqueItems: true,
        maxItems: 16,
        description:
          "Customer Model properties that identify a person, highest priority first. Besides `userId`, `anonymousId` and `alias`, two profiles are merged when the first of these that has a value on both is equal; when it differs they stay apart, whatever the later ones say. Each must be a non-array, non-json property of the model. After changing the list, `npm run resolve` rebuilds the profiles under it.",
        examples: [["email", "phone"]],
      }),
    ),
    identifiersMergeUserIds: Type.Optional(
      Type.Boolean({
        default: false,
        description:
          "Whether identifiers may merge two profiles that carry different `userId`s. By default a `userId` is authoritative: two users with the same email stay two profiles (as Segment and Krenalis do); `true` merges them.",
      }),
    ),
  },
  { additionalProperties: false },
);
export type CustomerModelFile = Static<typeof CustomerModelFile>;
