import { compileExpression, type Expression } from "../filter.ts";
import type { SandboxedTransform, TransformResult } from "./types.ts";

const message = (e: unknown) => {
  const x = e as { code?: string; message?: string };
  return `${x.code ? x.code + ": " : ""}${x.message ?? String(e)}`;
};

/** `mapping`: Customer Model property → JSONata expression (the visual-mapping model). Undefined leaves a property unassigned. */
export function mappingTransform(mapping: Record<string, string>): SandboxedTransform {
  const compiled: [string, Expression][] = Object.entries(mapping).map(([k, expr]) => [k, compileExpression(expr)]);
  return {
    async transformBatch(events) {
      return events.map((event): TransformResult => {
        // Entries, not assignments: a property named "__proto__" must stay a plain key.
        const entries: [string, unknown][] = [];
        for (const [property, e] of compiled) {
          let v: unknown;
          try {
            v = e.evaluate(event);
          } catch (err) {
            return { ok: false, error: `mapping of "${property}": ${message(err)}` };
          }
          if (v !== undefined) entries.push([property, v]);
        }
        return { ok: true, value: Object.fromEntries(entries) };
      });
    },
    dispose() {},
  };
}

/** `jsonata`: one expression returning the properties object. */
export function jsonataTransform(expr: string): SandboxedTransform {
  const e = compileExpression(expr);
  return {
    async transformBatch(events) {
      return events.map((event): TransformResult => {
        try {
          return { ok: true, value: e.evaluate(event) };
        } catch (err) {
          return { ok: false, error: message(err) };
        }
      });
    },
    dispose() {},
  };
}
