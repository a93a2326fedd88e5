/**
 * Exit codes of the `agent-fabric` command, the same for every subcommand (README "Command
 * line" lists them; `agent-fabric --help` prints them).
 *
 * @module
 */
export const EXIT = {
  /** The command did what was asked. */
  ok: 0,
  /**
   * The command failed: the sidecar refused the request (not found, invalid, wrong state) or
   * answered what the CLI cannot take (not the method's answer, larger than `--max-answer-mib`),
   * a config or policy file is invalid, or `serve` could not start or stopped unasked.
   */
  failure: 1,
  /** The command line is wrong: unknown command or option, missing or extra argument. */
  usage: 2,
  /**
   * The sidecar cannot be reached at `--url` (what answers there redirects), it did not answer
   * or stopped sending its answer within `--request-timeout`, or the connection to it was lost
   * (a stream cut).
   */
  unreachable: 3,
  /**
   * No admin token (for `mcp`: no agent token), an unreadable token file, or the sidecar refused
   * the token (401/403).
   */
  auth: 4,
} as const;

/** The exit-code table as printed by `agent-fabric --help`. */
export const EXIT_CODES_HELP = `exit codes:
  0  done
  1  failed: the sidecar refused the request (or its answer is over --max-answer-mib),
     a file is invalid, serve could not start
  2  usage: unknown command or option, missing or extra argument
  3  the sidecar cannot be reached at --url (or it redirects), it did not answer within
     --request-timeout, or the connection was lost
  4  no admin token (mcp: no agent token), unreadable token file, or the token was refused`;
