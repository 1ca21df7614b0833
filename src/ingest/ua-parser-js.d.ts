// ua-parser-js 1.x ships no type declarations; this is the part Tributary uses.
declare module "ua-parser-js" {
  export interface IResult {
    browser: { name?: string; version?: string; major?: string };
    os: { name?: string; version?: string };
  }
  export class UAParser {
    constructor(ua?: string);
    getResult(): IResult;
  }
}
