import type { Pipeline } from "../../config/schema.ts";
import { jsonataTransform, mappingTransform } from "./expressions.ts";
import { createProcessTransform } from "./sandbox-process.ts";
import { parseSandboxOptions, type SandboxProcessOptions } from "./sandbox-isolation.ts";
import type { SandboxedTransform } from "./types.ts";

/**
 * The pipeline's one transformation, ready to run. User code loads here: a broken one throws
 * TransformLoadError. JavaScript and Python always run in a sandbox process of their own
 * (sandbox-process.ts), never in the node's process.
 */
export async function createTransform(
  t: NonNullable<Pipeline["transform"]>,
  options?: SandboxProcessOptions,
): Promise<SandboxedTransform> {
  if ("mapping" in t) return mappingTransform(t.mapping);
  if ("jsonata" in t) return jsonataTransform(t.jsonata);
  const o = options ?? parseSandboxOptions();
  if ("javascript" in t) return createProcessTransform("javascript", t.javascript, o);
  return createProcessTransform("python", t.python, o);
}
