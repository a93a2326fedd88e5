/**
 * @module
 */
import { stat } from 'node:fs/promises';

/** True when something exists at `path` (any kind of entry). */
export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
