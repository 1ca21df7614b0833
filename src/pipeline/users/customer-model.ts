import { Type, type TSchema } from "@sinclair/typebox";
import { TypeCompiler, type TypeCheck } from "@sinclair/typebox/compiler";
import type { ServerFeatures } from "../../sink/clickhouse/server.ts";

/**
 * The Customer Model (pipelines/customer-model.yaml): typed properties that become the typed
 * columns of `users`. One description per property type gives the TypeBox check a
 * transformation's output must pass, the ClickHouse column, and the value conversion.
 */
export type CustomerModel = Record<string, string>;

const ISO_DATETIME = /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?$/;

interface Scalar {
  /** What a transformation may return for the property. */
  schema(): TSchema;
  /** ClickHouse type on this server (not Nullable-wrapped). */
  column(f: ServerFeatures): string;
  /** The value as JSONEachRow wants it for that column. */
  toCell(v: unknown, f: ServerFeatures): unknown;
}

export const timeCell = (ms: number, f: ServerFeatures): string | number =>
  f.dateTime64 ? new Date(ms).toISOString().replace("T", " ").replace("Z", "") : ms;

const SCALARS: Record<string, Scalar> = {
  string: { schema: () => Type.String(), column: () => "String", toCell: (v) => v },
  int: {
    schema: () => Type.Integer({ minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER }),
    column: () => "Int64",
    toCell: (v) => v,
  },
  float: { schema: () => Type.Number(), column: () => "Float64", toCell: (v) => v },
  boolean: { schema: () => Type.Boolean(), column: (f) => (f.bool ? "Bool" : "UInt8"), toCell: (v, f) => (f.bool ? v : v ? 1 : 0) },
  datetime: {
    // ISO 8601 text, or epoch milliseconds.
    schema: () => Type.Union([Type.String({ pattern: ISO_DATETIME.source }), Type.Integer({ minimum: 0 })]),
    column: (f) => (f.dateTime64 ? "DateTime64(3, 'UTC')" : "UInt64"),
    toCell: (v, f) => timeCell(typeof v === "number" ? v : Date.parse(v as string), f),
  },
  json: { schema: () => Type.Unknown(), column: () => "String", toCell: (v) => JSON.stringify(v) },
};

function scalarOf(type: string): { scalar: Scalar; array: boolean } {
  const m = /^array\((\w+)\)$/.exec(type);
  const scalar = SCALARS[m ? m[1]! : type];
  if (!scalar) throw new Error(`unknown Customer Model type "${type}"`);
  return { scalar, array: !!m };
}

/** The ClickHouse column type of a property; scalars are Nullable so a property can be unset. */
export function columnType(type: string, f: ServerFeatures): string {
  const { scalar, array } = scalarOf(type);
  return array ? `Array(${scalar.column(f)})` : `Nullable(${scalar.column(f)})`;
}

export function toCell(type: string, v: unknown, f: ServerFeatures): unknown {
  const { scalar, array } = scalarOf(type);
  if (v === null || v === undefined) return array ? [] : null;
  return array ? (v as unknown[]).map((x) => scalar.toCell(x, f)) : scalar.toCell(v, f);
}

export class ModelViolation extends Error {
  constructor(
    message: string,
    readonly property: string,
  ) {
    super(message);
    this.name = "ModelViolation";
  }
}

/** Checks transformation output against the model: unknown properties and wrong types are errors. */
export class ModelCheck {
  readonly #check: TypeCheck<TSchema>;

  constructor(readonly model: CustomerModel) {
    const props: Record<string, TSchema> = {};
    for (const [name, type] of Object.entries(model)) {
      const { scalar, array } = scalarOf(type);
      // null clears a property; undefined (absent) leaves it as it was.
      props[name] = Type.Optional(Type.Union([array ? Type.Array(scalar.schema()) : scalar.schema(), Type.Null()]));
    }
    this.#check = TypeCompiler.Compile(Type.Object(props, { additionalProperties: false }));
  }

  /** Throws ModelViolation naming the first offending property. */
  assert(value: unknown): asserts value is Record<string, unknown> {
    if (!value || typeof value !== "object" || Array.isArray(value)) throw new ModelViolation(`the transformation returned ${Array.isArray(value) ? "an array" : typeof value}, not an object`, "");
    if (this.#check.Check(value)) return;
    for (const key of Object.keys(value)) {
      if (!(key in this.model)) throw new ModelViolation(`property "${key}" is not in the Customer Model`, key);
    }
    const first = this.#check.Errors(value).First()!;
    const property = first.path.split("/")[1] ?? "";
    const got = (value as Record<string, unknown>)[property];
    throw new ModelViolation(`property "${property}" must be ${this.model[property]}, got ${JSON.stringify(got)?.slice(0, 80)}`, property);
  }
}
