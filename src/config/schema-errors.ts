import type { TSchema } from "@sinclair/typebox";
import { ValueErrorType, type ValueError } from "@sinclair/typebox/errors";
import { Value } from "@sinclair/typebox/value";
import { didYouMean } from "./suggest.ts";

/**
 * TypeBox errors as a person fixing a YAML file needs them: what the field accepts
 * (`expected events | users`), the closest name for an unknown key or value (`did you mean
 * allowedOrigins?`), and for a union of objects (`transform`, `check`, `dedup`) the error inside
 * the branch the file meant rather than TypeBox's bare "Expected union value".
 * Messages never quote the value itself: it may be a secret written in the file.
 */
export interface SchemaProblem {
  /** JSON pointer of the field, "" for the whole file. */
  path: string;
  message: string;
}

type S = TSchema & Record<string, any>;

/** A short rendering of what a schema accepts. */
export function expected(schema: TSchema): string {
  const s = schema as S;
  if ("const" in s) return String(s.const);
  if (Array.isArray(s.anyOf)) return s.anyOf.map(expected).join(" | ");
  switch (s.type) {
    case "object":
      if (s.patternProperties)
        return `a mapping of names to ${expected(Object.values(s.patternProperties)[0] as TSchema)}`;
      return `{${(s.required?.length ? s.required : Object.keys(s.properties ?? {})).join(", ")}}`;
    case "array":
      return `a list of ${expected(s.items)}`;
    case "string":
      return "text";
    case "integer":
      return "an integer";
    case "number":
      return "a number";
    case "boolean":
      return "true | false";
  }
  return "a value";
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);

function valueAt(root: unknown, path: string): unknown {
  let v = root;
  for (const seg of path.split("/").slice(1)) {
    const key = seg.replace(/~1/g, "/").replace(/~0/g, "~");
    v = isObject(v) || Array.isArray(v) ? (v as Record<string, unknown>)[key] : undefined;
  }
  return v;
}

const parentPath = (path: string) => path.slice(0, path.lastIndexOf("/"));
const lastKey = (path: string) =>
  path
    .slice(path.lastIndexOf("/") + 1)
    .replace(/~1/g, "/")
    .replace(/~0/g, "~");

/** One message per field (a union reports each branch; the first is enough), at most `limit`. */
export function schemaProblems(schema: TSchema, value: unknown, limit = 10): SchemaProblem[] {
  const out: SchemaProblem[] = [];
  const seen = new Set<string>();
  const add = (p: SchemaProblem) => {
    if (seen.has(p.path) || out.length >= limit) return;
    seen.add(p.path);
    out.push(p);
  };
  collect(Value.Errors(schema, value), value, "", add);
  return out;
}

function collect(errors: Iterable<ValueError>, root: unknown, prefix: string, add: (p: SchemaProblem) => void): void {
  for (const e of errors) {
    const path = prefix + e.path;
    const s = e.schema as S;
    switch (e.type) {
      case ValueErrorType.ObjectAdditionalProperties: {
        const key = lastKey(e.path);
        if (s.patternProperties) {
          add({
            path,
            message: `"${key}" is not a valid name: expected ${Object.keys(s.patternProperties).join(" or ")}`,
          });
          break;
        }
        const parent = valueAt(root, parentPath(e.path));
        const free = Object.keys(s.properties ?? {}).filter((k) => !(isObject(parent) && k in parent));
        const hint = didYouMean(key, free);
        add({
          path,
          message: `unknown key "${key}"${hint || `; expected one of ${Object.keys(s.properties ?? {}).join(", ")}`}`,
        });
        break;
      }
      case ValueErrorType.ObjectRequiredProperty:
        add({ path, message: `required, and missing (expected ${expected(s)})` });
        break;
      case ValueErrorType.Union:
        union(s, e.value, root, e.path, prefix, add);
        break;
      default:
        // A value of the wrong kind says what the key takes ("a list of text"), not TypeBox's "Expected array".
        add({
          path,
          message: /^Expected (array|string|number|integer|boolean|object)$/.test(e.message)
            ? `expected ${expected(s)}`
            : e.message.replace(/^Expected/, "expected"),
        });
    }
  }
}

function union(
  s: S,
  value: unknown,
  root: unknown,
  path: string,
  prefix: string,
  add: (p: SchemaProblem) => void,
): void {
  const branches = s.anyOf as S[];
  const at = prefix + path;
  if (isObject(value)) {
    const objects = branches.filter((b) => b.type === "object" && b.properties);
    const used = objects.filter((b) => Object.keys(value).some((k) => k in b.properties));
    if (used.length > 1 && objects.every((b) => Object.keys(b.properties).length === 1)) {
      const keys = used.map((b) => Object.keys(b.properties)[0]).join(" and ");
      return add({ path: at, message: `expected exactly one of ${expected(s)}, not ${keys} together` });
    }
    // The branch the file meant: the one sharing most keys with the value. Its own errors are precise.
    let meant: S | undefined;
    let shared = 0;
    for (const b of objects) {
      const n = Object.keys(value).filter((k) => k in b.properties).length;
      if (n > shared) [meant, shared] = [b, n];
    }
    if (meant) return collect(Value.Errors(meant, value), value, at, add);
    const unknown = Object.keys(value).find((k) => !objects.some((b) => k in b.properties));
    const hint =
      unknown === undefined
        ? ""
        : `; unknown key "${unknown}"${didYouMean(
            unknown,
            objects.flatMap((b) => Object.keys(b.properties)),
          )}`;
    return add({ path: at, message: `expected ${expected(s)}${hint}` });
  }
  if (Array.isArray(value)) {
    const list = branches.find((b) => b.type === "array");
    if (list) return collect(Value.Errors(list, value), value, at, add);
  }
  const literals = branches.filter((b) => "const" in b).map((b) => String(b.const));
  const hint = typeof value === "string" ? didYouMean(value, literals) : "";
  add({ path: at, message: `expected ${expected(s)}${hint}` });
}
