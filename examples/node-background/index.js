// A legacy (gen1) background function: (data, context), signature type "event".
// Gen1 ignored the return value; the Functions Framework sends it back as the response
// body (200), and answers 204 when nothing is returned. Returning a summary lets the
// smoke test check that the event really reached the function.
exports.handler = (data, context) => {
  const items = (data && data.items) || [];
  const total = items.reduce((sum, item) => sum + item.quantity * item.price, 0);
  const summary = `event ${context.eventId}: order ${data.order} has ${items.length} items, total ${total}`;
  console.log(summary);
  return summary;
};
