// A Storage-triggered function with the CloudEvent signature (signature type "cloudevent"),
// as Cloud Run functions write them. It refuses an event that is not an object change in a
// bucket (the Functions Framework then answers 500), so a smoke test passes only when a real
// Storage event arrived.
exports.onUpload = (cloudEvent) => {
  const file = cloudEvent.data || {};
  if (!cloudEvent.type.startsWith('google.cloud.storage.object.v1.') || !file.bucket || !file.name) {
    throw new Error(`not a Storage object event: ${cloudEvent.type}`);
  }
  console.log(`${cloudEvent.type}: gs://${file.bucket}/${file.name} (${file.size} bytes, ` +
              `${file.contentType}), subject ${cloudEvent.subject}`);
};
