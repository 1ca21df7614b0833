import { Type, type Static, type TSchema } from "@sinclair/typebox";
import { TypeCompiler, type TypeCheck } from "@sinclair/typebox/compiler";

/**
 * Segment's event spec as TypeBox schemas (PRODUCT.md §1 "Validity"). Each rule carries the
 * message users see, so a rejection names the field in words a sender understands.
 */

export const EVENT_TYPES = ["track", "identify", "page", "screen", "group", "alias"] as const;
export type EventType = (typeof EVENT_TYPES)[number];

// ISO-8601 date-time as Segment's libraries send it (date, 'T', time, optional fraction, zone).
const ISO = "^\\d{4}-\\d{2}-\\d{2}(T\\d{2}:\\d{2}(:\\d{2}(\\.\\d{1,9})?)?(Z|[+-]\\d{2}(:?\\d{2})?)?)?$";
const Timestamp = (field: string) =>
  Type.String({ pattern: ISO, errorMessage: `"${field}" must be an ISO-8601 timestamp` });
const Obj = (field: string) =>
  Type.Object({}, { additionalProperties: true, errorMessage: `"${field}" must be an object` });
const Id = (field: string, errorMessage = `"${field}" must be a non-empty string`) =>
  Type.Union([Type.String({ minLength: 1 }), Type.Number()], { errorMessage });

export const BaseEvent = Type.Object(
  {
    type: Type.Union(
      EVENT_TYPES.map((t) => Type.Literal(t)),
      { errorMessage: `"type" must be one of ${EVENT_TYPES.join(", ")}` },
    ),
    messageId: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 100,
        errorMessage: `"messageId" must be a string of 1 to 100 characters`,
      }),
    ),
    userId: Type.Optional(Id("userId")),
    anonymousId: Type.Optional(Id("anonymousId")),
    timestamp: Type.Optional(Timestamp("timestamp")),
    originalTimestamp: Type.Optional(Timestamp("originalTimestamp")),
    sentAt: Type.Optional(Timestamp("sentAt")),
    properties: Type.Optional(Obj("properties")),
    traits: Type.Optional(Obj("traits")),
    context: Type.Optional(Obj("context")),
    integrations: Type.Optional(Obj("integrations")),
  },
  { additionalProperties: true, errorMessage: "an event must be a JSON object" },
);
export type Event = Static<typeof BaseEvent> & Record<string, unknown>;

const NonEmpty = (field: string, type: string) =>
  Type.String({ minLength: 1, errorMessage: `${type} event needs a non-empty "${field}"` });
const Needs = (field: string, type: string, value: TSchema = NonEmpty(field, type)) =>
  Type.Object(
    { [field]: value },
    { additionalProperties: true, errorMessage: `${type} event needs a non-empty "${field}"` },
  );

/** The rule each type adds to the base. */
export const EVENT_RULES: Record<EventType, TSchema | undefined> = {
  track: Needs("event", "track"),
  group: Needs("groupId", "group", Id("groupId", 'group event needs a non-empty "groupId"')),
  alias: Needs("previousId", "alias", Id("previousId", 'alias event needs a non-empty "previousId"')),
  identify: undefined,
  page: Type.Object({ name: Type.Optional(Type.String({ errorMessage: `"name" must be a string` })) }),
  screen: Type.Object({ name: Type.Optional(Type.String({ errorMessage: `"name" must be a string` })) }),
};

const nonEmptyId = Type.Union([Type.String({ minLength: 1 }), Type.Number()]);
/** Every event needs someone it is about. */
export const Identity = Type.Union(
  [
    Type.Object({ userId: nonEmptyId }, { additionalProperties: true }),
    Type.Object({ anonymousId: nonEmptyId }, { additionalProperties: true }),
  ],
  { errorMessage: `event needs a non-empty "userId" or "anonymousId"` },
);

const base = TypeCompiler.Compile(BaseEvent);
const identity = TypeCompiler.Compile(Identity);
const typed = Object.fromEntries(
  Object.entries(EVENT_RULES).map(([t, s]) => [t, s && TypeCompiler.Compile(s)]),
) as Record<EventType, TypeCheck<TSchema> | undefined>;

function firstError(check: TypeCheck<TSchema>, value: unknown): string {
  const e = check.Errors(value).First();
  if (!e) return "invalid event";
  const custom = (e.schema as { errorMessage?: string }).errorMessage;
  if (custom) return custom;
  const field = e.path.slice(1).replace(/\//g, ".");
  return field ? `"${field}": ${e.message}` : e.message;
}

/** `undefined` when the event is valid, else the reason, naming the field. */
export function validateEvent(value: unknown): string | undefined {
  if (!base.Check(value)) return firstError(base, value);
  const extra = typed[value.type];
  if (extra && !extra.Check(value)) return firstError(extra, value);
  if (!identity.Check(value)) return firstError(identity, value);
  return undefined;
}

/** `/v1/batch`'s envelope: the batch-level fields merged into each event. */
export const BatchEnvelope = Type.Object(
  {
    batch: Type.Array(Type.Unknown(), { errorMessage: `"batch" must be an array of events` }),
    context: Type.Optional(Obj("context")),
    integrations: Type.Optional(Obj("integrations")),
    sentAt: Type.Optional(Timestamp("sentAt")),
    writeKey: Type.Optional(Type.String()),
  },
  { additionalProperties: true, errorMessage: `body must be {"batch": [...]}` },
);
export type BatchEnvelope = Static<typeof BatchEnvelope>;
const envelope = TypeCompiler.Compile(BatchEnvelope);

export function validateEnvelope(value: unknown): string | undefined {
  return envelope.Check(value) ? undefined : firstError(envelope, value);
}
