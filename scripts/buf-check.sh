#!/usr/bin/env bash
# The proto checks of `npm run lint`: `buf lint` (rules in buf.yaml), then `buf breaking`
# against the previous commit (HEAD~1), so a commit that changes the wire contract in a way a
# deployed client would notice fails. Files that HEAD~1 does not have are new, not breaking.
#
# Runs from any working directory; needs git history one commit deep. A shallow clone without
# HEAD~1 fails with a message saying how to fetch it (skipping would hide a breaking change);
# the very first commit has nothing to compare against and passes the breaking check.
#
# buf flags some changes that keep the wire and the JSON intact, e.g. giving an RPC a renamed
# request message with the same fields (RPC_SAME_REQUEST_TYPE). A commit that makes such a
# change on purpose says so with a `Proto-Breaking: <why>` trailer in its message: the check
# still prints what it found but does not fail that commit.
set -euo pipefail
cd "$(dirname "$0")/.."
buf=node_modules/.bin/buf

"$buf" lint

if ! previous=$(git rev-parse -q --verify 'HEAD~1^{commit}'); then
  if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    echo "buf breaking: HEAD~1 is not in this shallow clone; run 'git fetch --deepen=1' first" >&2
    exit 1
  fi
  echo "buf breaking: HEAD is the first commit; nothing to compare against"
  exit 0
fi
if ! git ls-tree -r --name-only "$previous" -- proto | grep -q '\.proto$'; then
  echo "buf breaking: HEAD~1 has no .proto files in proto/; nothing to compare against"
  exit 0
fi
# HEAD~1's proto/ as it was, compared as a plain folder: works whether or not HEAD~1 had a
# buf.yaml, and buf's own rules (from today's buf.yaml) apply.
against=$(mktemp -d)
trap 'rm -rf "$against"' EXIT
git archive "$previous" proto | tar -x -C "$against"
# A previous commit whose protos do not build (e.g. two files declaring one message, fixed by
# this commit) is no contract anyone could deploy: there is nothing to compare against.
if ! "$buf" build "$against/proto" -o /dev/null 2>/dev/null; then
  echo "buf breaking: HEAD~1's protos do not build; nothing to compare against"
  exit 0
fi
if git log -1 --format=%B | grep -qE '^Proto-Breaking: *[^ ]'; then
  "$buf" breaking --against "$against/proto" ||
    echo "buf breaking: accepted by the Proto-Breaking trailer of HEAD's commit message"
else
  "$buf" breaking --against "$against/proto"
fi
