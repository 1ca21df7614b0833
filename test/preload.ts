// Quiet node logs in tests unless asked for (LOG_LEVEL=debug bun test ...).
process.env.LOG_LEVEL ??= "warn";
// Node logs as JSON lines in tests even on a terminal: some tests read them back.
process.env.LOG_FORMAT ??= "json";
