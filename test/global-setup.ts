/**
 * Fails the run when a test left a `.fabric/` folder in the repository: the default state path
 * (`.fabric/state.db`) is taken from the working directory, which is the repository while tests
 * run, so a test that starts a sidecar (or runs `agent-fabric serve`) without a folder of its own
 * writes a state file here — shared by every test file running at once, and left behind.
 * A `.fabric/` that was already there when the run began (a developer's own) is left alone.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const FABRIC_HOME = fileURLToPath(new URL('../.fabric', import.meta.url));

export default function setup(): () => void {
  const before = existsSync(FABRIC_HOME);
  return () => {
    if (!before && existsSync(FABRIC_HOME)) {
      // A throw here is only logged ("error during close"): the run must fail by its exit code.
      process.exitCode = 1;
      throw new Error(
        `a test wrote ${FABRIC_HOME} (the default state folder, taken from the working directory): give the sidecar or CLI it starts a temp folder (cwd, state: memory or a state path)`,
      );
    }
  };
}
