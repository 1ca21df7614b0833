/** JetStream could not confirm that events are stored; the sender should retry (503). */
export class BusUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "BusUnavailableError";
  }
}

/**
 * The events streams on the servers were made for another TRIBUTARY_STREAM_PARTITIONS: a
 * messageId's stream would change with the count, so a retry could be stored twice. Never silent.
 */
export class StreamLayoutError extends Error {
  readonly code = "STREAM_LAYOUT";
  constructor(message: string) {
    super(message);
    this.name = "StreamLayoutError";
  }
}
