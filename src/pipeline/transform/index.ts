import type { Pipeline } from "../../config/schema.ts";
import { jsonataTransform, mappingTransform } from "./expressions.ts";
import { transformLimitDefaults, type SandboxedTransform, type TransformLimits } from "./types.ts";

/** The pipeline's one transformation, ready to run. User code loads here: a broken one throws TransformLoadError. */
export async function createTransform(t: NonNullable<Pipeline["transform"]>, limits: TransformLimits = transformLimitDefaults): Promise<SandboxedTransform> {
  if ("mapping" in t) return mappingTransform(t.mapping);
  if ("jsonata" in t) return jsonataTransform(t.jsonata);
  if ("javascript" in t) {
    // Loaded on demand: the sandbox (a Worker with QuickJS) costs nothing until a pipeline uses it.
    const { createJavaScriptTransform } = await import("./javascript.ts");
    return createJavaScriptTransform(t.javascript, limits);
  }
  // Pyodide in its own Worker, loaded on demand like JavaScript.
  const { createPythonTransform } = await import("./python.ts");
  return createPythonTransform(t.python, limits);
}
