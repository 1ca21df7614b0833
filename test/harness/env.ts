import { expect } from "bun:test";
import { EnvironmentError, parseOptions } from "../../src/config/env.ts";

/** The message with which src/config/env.ts refuses `env` (the test fails if it is accepted or refused otherwise). */
export function refusal(env: Record<string, string>): string {
  try {
    parseOptions(env);
  } catch (e) {
    expect(e).toBeInstanceOf(EnvironmentError);
    return (e as Error).message;
  }
  throw new Error(`accepted ${JSON.stringify(env)}`);
}
