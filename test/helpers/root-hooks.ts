import { closeFixture } from "./fixture.js";
import { closePostgres } from "./postgres.js";

/** Mocha root hooks: the shared SoftHSM fixture and PostgreSQL server are torn down once, after every test file. */
export const mochaHooks = {
  async afterAll(): Promise<void> {
    await closeFixture();
    await closePostgres();
  },
};
