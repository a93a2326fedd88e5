// Handler of the `code_review` task type. It runs on a worker thread of the `local` executor:
// a real agent would call its model here; this one inspects the payload and answers.
export default async function codeReview(payload, ctx) {
  if (ctx.signal.aborted) throw new Error('cancelled before start');
  return { reviewed: payload.prUrl, verdict: 'approve', comments: [] };
}
