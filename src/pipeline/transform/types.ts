/** The outcome of transforming one event: the object it produced, or why it failed. */
export type TransformResult = { ok: true; value: unknown } | { ok: false; error: string };

export interface TransformLimits {
  /** Per call of transform(event), in milliseconds. */
  timeoutMs: number;
  /** Memory the sandbox may hold, in bytes. */
  memoryBytes: number;
}

/** A user transformation running sandboxed; events go in batches so host↔guest crossings stay few. */
export interface SandboxedTransform {
  /** One result per event, in order. Never throws for what user code does; a broken sandbox is rebuilt. */
  transformBatch(events: unknown[]): Promise<TransformResult[]>;
  dispose(): void;
}

/** User code that cannot be loaded (syntax error, no transform function): a config error. */
export class TransformLoadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TransformLoadError";
  }
}
