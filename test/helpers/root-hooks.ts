import { closeFixture } from "./fixture.js";

/** Mocha root hooks: the shared SoftHSM fixture is torn down once, after every test file. */
export const mochaHooks = {
  async afterAll(): Promise<void> {
    await closeFixture();
  },
};
