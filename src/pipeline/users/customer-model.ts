import { Type, type TSchema } from "@sinclair/typebox";
import { TypeCompiler, type TypeCheck } from "@sinclair/typebox/compiler";
import type { ServerFeatures } from "../../sink/clickhouse/server.ts";

/**
 * The Customer Model (pipelines/customer-model.yaml): typed properties that become the typed
 * columns of `users`. One description per property type gives the TypeBox check a
 * transformation's output must pass, the ClickHouse column, and the value conversion.
 */
export type CustomerModel = Record<string, string>;

const ISO_DATETIME =
  /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?(Z|[+-]\d{2}:?\d{2})?$/;

/**
 * The instants a datetime column can hold, in epoch milliseconds: DateTime64(3) takes
 * 1900-01-01 00:00:00 to 2299-12-31 23:59:59.999 (ClickHouse 22.8 and later; 20.1 to 22.7 took
 * 1925-01-01 to 2283-11-11). Before 20.1 datetimes are UInt64 epoch milliseconds, read as
 * DateTime (`toDateTime(intDiv(x, 1000))`), whose range is 1970-01-01 to 2106-02-07 06:28:15.
 */
export function datetimeRange(f: Pick<ServerFeatures, "dateTime64" | "version">): { min: number; max: number } {
  if (!f.dateTime64) return { min: 0, max: 4294967295999 };
  const [major = 0, minor = 0] = f.version.split(".").map(Number);
  if (major > 22 || (major === 22 && minor >= 8)) return { min: Date.UTC(1900, 0, 1), max: Date.UTC(2300, 0, 1) - 1 };
  return { min: Date.UTC(1925, 0, 1), max: Date.UTC(2283, 10, 11, 23, 59, 59, 999) };
}

/** Servers this code is checked against when it does not know the server (bun run check). */
const CURRENT: Pick<ServerFeatures, "dateTime64" | "version"> = { dateTime64: true, version: "24.8" };

const daysIn = (y: number, m: number) => new Date(Date.UTC(y, m, 0)).getUTCDate();

/**
 * The epoch milliseconds of a datetime property value (ISO 8601 text or epoch milliseconds), or
 * why it is not one: the calendar is checked field by field (no month 13, no 30 February, no hour
 * 24), where Date.parse would roll over or give NaN. Text without an offset is UTC.
 */
export function datetimeMs(v: unknown): number | string {
  if (typeof v === "number") return Number.isSafeInteger(v) ? v : "not an integer number of milliseconds";
  if (typeof v !== "string") return "neither ISO 8601 text nor epoch milliseconds";
  const m = ISO_DATETIME.exec(v);
  if (!m) return "not ISO 8601 (YYYY-MM-DD[THH:MM[:SS[.fff]]][Z|±HH:MM])";
  const [y, mo, d, h = 0, mi = 0, s = 0] = m.slice(1, 7).map((x) => (x === undefined ? 0 : Number(x)));
  if (mo! < 1 || mo! > 12) return `month ${mo} does not exist`;
  if (d! < 1 || d! > daysIn(y!, mo!))
    return `day ${d} does not exist in ${String(y).padStart(4, "0")}-${String(mo).padStart(2, "0")}`;
  if (h > 23 || mi > 59 || s > 59) return "the time of day does not exist";
  let offset = 0;
  const zone = m[8];
  if (zone && zone !== "Z") {
    const oh = Number(zone.slice(1, 3));
    const om = Number(zone.slice(-2));
    if (oh > 23 || om > 59) return `offset ${zone} does not exist`;
    offset = (zone[0] === "-" ? -1 : 1) * (oh * 60 + om) * 60_000;
  }
  const ms = Number((m[7] ?? "").padEnd(3, "0").slice(0, 3));
  const t = new Date(0);
  t.setUTCFullYear(y!, mo! - 1, d!);
  t.setUTCHours(h, mi, s, ms);
  return t.getTime() - offset;
}

/** Why a datetime value cannot be stored on this server, or undefined when it can. */
export function datetimeProblem(
  v: unknown,
  f: Pick<ServerFeatures, "dateTime64" | "version"> = CURRENT,
): string | undefined {
  const ms = datetimeMs(v);
  if (typeof ms === "string") return ms;
  const { min, max } = datetimeRange(f);
  if (ms < min || ms > max)
    return `outside ${iso(min)} .. ${iso(max)}, the range the users table stores on ClickHouse ${f.version}`;
  return undefined;
}

const iso = (ms: number) => new Date(ms).toISOString();

interface Scalar {
  /** What a transformation may return for the property. */
  schema(): TSchema;
  /** ClickHouse type on this server (not Nullable-wrapped). */
  column(f: ServerFeatures): string;
  /**
   * The value as JSONEachRow wants it for that column, or null when the stored value does not fit
   * the type (stored before a retype, or before the check knew better): a users row is always
   * insertable, so no stored value can poison the profile's later rows.
   */
  toCell(v: unknown, f: ServerFeatures): unknown;
}

export const timeCell = (ms: number, f: ServerFeatures): string | number =>
  f.dateTime64 ? new Date(ms).toISOString().replace("T", " ").replace("Z", "") : ms;

const SCALARS: Record<string, Scalar> = {
  string: { schema: () => Type.String(), column: () => "String", toCell: (v) => (typeof v === "string" ? v : null) },
  int: {
    schema: () => Type.Integer({ minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER }),
    column: () => "Int64",
    toCell: (v) => (Number.isSafeInteger(v) ? v : null),
  },
  float: {
    schema: () => Type.Number(),
    column: () => "Float64",
    toCell: (v) => (typeof v === "number" && Number.isFinite(v) ? v : null),
  },
  boolean: {
    schema: () => Type.Boolean(),
    column: (f) => (f.bool ? "Bool" : "UInt8"),
    toCell: (v, f) => (typeof v !== "boolean" ? null : f.bool ? v : v ? 1 : 0),
  },
  datetime: {
    // ISO 8601 text, or epoch milliseconds; the calendar and the server's range are checked by ModelCheck.
    schema: () => Type.Union([Type.String({ pattern: ISO_DATETIME.source }), Type.Integer()]),
    column: (f) => (f.dateTime64 ? "DateTime64(3, 'UTC')" : "UInt64"),
    toCell: (v, f) => (datetimeProblem(v, f) === undefined ? timeCell(datetimeMs(v) as number, f) : null),
  },
  json: { schema: () => Type.Unknown(), column: () => "String", toCell: (v) => JSON.stringify(v) ?? null },
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
  if (!array) return scalar.toCell(v, f);
  // An element that does not fit is left out: Array columns hold no nulls.
  return Array.isArray(v) ? v.map((x) => scalar.toCell(x, f)).filter((x) => x !== null) : [];
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

/**
 * Checks transformation output against the model: unknown properties and wrong types are errors,
 * and so is a datetime that is no calendar date or that the server's users table cannot store.
 */
export class ModelCheck {
  readonly #check: TypeCheck<TSchema>;
  readonly #datetimes: string[] = [];

  constructor(
    readonly model: CustomerModel,
    readonly features: Pick<ServerFeatures, "dateTime64" | "version"> = CURRENT,
  ) {
    const props: Record<string, TSchema> = {};
    for (const [name, type] of Object.entries(model)) {
      const { scalar, array } = scalarOf(type);
      if (scalar === SCALARS.datetime) this.#datetimes.push(name);
      // null clears a property; undefined (absent) leaves it as it was.
      props[name] = Type.Optional(Type.Union([array ? Type.Array(scalar.schema()) : scalar.schema(), Type.Null()]));
    }
    this.#check = TypeCompiler.Compile(Type.Object(props, { additionalProperties: false }));
  }

  /** Throws ModelViolation naming the first offending property. */
  assert(value: unknown): asserts value is Record<string, unknown> {
    if (!value || typeof value !== "object" || Array.isArray(value))
      throw new ModelViolation(
        `the transformation returned ${Array.isArray(value) ? "an array" : typeof value}, not an object`,
        "",
      );
    if (this.#check.Check(value)) return this.#assertDatetimes(value as Record<string, unknown>);
    for (const key of Object.keys(value)) {
      if (!(key in this.model)) throw new ModelViolation(`property "${key}" is not in the Customer Model`, key);
    }
    const first = this.#check.Errors(value).First()!;
    const property = first.path.split("/")[1] ?? "";
    const got = (value as Record<string, unknown>)[property];
    throw new ModelViolation(
      `property "${property}" must be ${this.model[property]}, got ${JSON.stringify(got)?.slice(0, 80)}`,
      property,
    );
  }

  #assertDatetimes(value: Record<string, unknown>): void {
    for (const name of this.#datetimes) {
      const v = value[name];
      if (v === null || v === undefined) continue;
      for (const x of Array.isArray(v) ? v : [v]) {
        const problem = datetimeProblem(x, this.features);
        if (problem)
          throw new ModelViolation(
            `property "${name}" must be ${this.model[name]}, got ${JSON.stringify(x)?.slice(0, 80)}: ${problem}`,
            name,
          );
      }
    }
  }
}
