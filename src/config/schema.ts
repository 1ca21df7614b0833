import { Type, type Static } from "@sinclair/typebox";

/** The schema of one file in `pipelines/`: the single source of truth for validation and types. */

export const ConnectionName = Type.String({ pattern: "^[a-z0-9_-]{1,64}$", description: "[a-z0-9_-]{1,64}, unique" });

export const Pipeline = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 128 }),
    import: Type.Union([Type.Literal("events"), Type.Literal("users")]),
    filter: Type.Optional(Type.String({ minLength: 1 })),
    consents: Type.Optional(Type.Array(Type.String({ minLength: 1 }))),
    transform: Type.Optional(
      Type.Union([
        Type.Object({ mapping: Type.Record(Type.String(), Type.String()) }, { additionalProperties: false }),
        Type.Object({ jsonata: Type.String() }, { additionalProperties: false }),
        Type.Object({ javascript: Type.String() }, { additionalProperties: false }),
        Type.Object({ python: Type.String() }, { additionalProperties: false }),
      ]),
    ),
    enabled: Type.Optional(Type.Boolean({ default: true })),
  },
  { additionalProperties: false },
);
export type Pipeline = Static<typeof Pipeline>;

const HmacCheck = Type.Object(
  {
    hmac: Type.Object(
      {
        header: Type.String({ minLength: 1 }),
        algorithm: Type.Union([Type.Literal("sha1"), Type.Literal("sha256"), Type.Literal("sha512")]),
        encoding: Type.Union([Type.Literal("hex"), Type.Literal("base64")]),
        prefix: Type.Optional(Type.String()),
        secret: Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })]),
      },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false },
);
const HeaderCheck = Type.Object(
  { header: Type.String({ minLength: 1 }), equals: Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })]) },
  { additionalProperties: false },
);

export const Connection = Type.Object(
  {
    connection: ConnectionName,
    source: Type.Union([Type.Literal("webhook"), Type.Literal("segment"), Type.Literal("rudderstack"), Type.Literal("raw")]),
    writeKeys: Type.Optional(Type.Array(Type.String({ minLength: 8 }), { minItems: 1 })),
    allowedOrigins: Type.Optional(Type.Array(Type.String({ minLength: 1 }))),
    ip: Type.Optional(Type.Union([Type.Literal("keep"), Type.Literal("mask24"), Type.Literal("drop")])),
    rateLimit: Type.Optional(
      Type.Object(
        { eventsPerMinute: Type.Number({ exclusiveMinimum: 0 }), burst: Type.Optional(Type.Number({ minimum: 1 })) },
        { additionalProperties: false },
      ),
    ),
    pipelines: Type.Optional(Type.Array(Pipeline)),
    // Raw webhook connections (PRODUCT.md §2).
    body: Type.Optional(Type.Union([Type.Literal("json"), Type.Literal("json-array"), Type.Literal("text")])),
    headers: Type.Optional(Type.Union([Type.Literal("all"), Type.Array(Type.String({ minLength: 1 }))])),
    check: Type.Optional(
      Type.Union([Type.Literal("github"), Type.Literal("segment"), Type.Literal("stripe"), HeaderCheck, HmacCheck]),
    ),
    secret: Type.Optional(Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })])),
    /**
     * `check: segment` only: also accept a JSON array whose `X-Signature` covers only its first
     * event (Segment's batched Webhooks deliveries). Events after the first are then not
     * authenticated, and a captured signed body can be replayed with any events after it.
     */
    segmentBatchFallback: Type.Optional(Type.Boolean()),
    insecure: Type.Optional(Type.Boolean()),
    dedup: Type.Optional(
      Type.Union([
        Type.Object({ header: Type.String({ minLength: 1 }) }, { additionalProperties: false }),
        Type.Object({ jsonata: Type.String({ minLength: 1 }) }, { additionalProperties: false }),
      ]),
    ),
    table: Type.Optional(Type.String({ pattern: "^[A-Za-z_][A-Za-z0-9_]{0,63}$" })),
    /** JSONata turning each raw payload into zero or more events for the connection's pipelines. */
    events: Type.Optional(Type.String({ minLength: 1 })),
  },
  { additionalProperties: false },
);
export type Connection = Static<typeof Connection>;

export const PropertyType = Type.Union(
  ["string", "int", "float", "boolean", "datetime", "json", "array(string)", "array(int)", "array(float)", "array(boolean)", "array(datetime)"].map(
    (t) => Type.Literal(t),
  ),
);

export const CustomerModelFile = Type.Object(
  {
    customerModel: Type.Record(Type.String({ pattern: "^[a-z_][a-z0-9_]{0,63}$" }), PropertyType),
    /** Allows removing and retyping properties (dropping or converting their columns) at the next reload. */
    migrate: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type CustomerModelFile = Static<typeof CustomerModelFile>;
