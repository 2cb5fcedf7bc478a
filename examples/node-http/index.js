// A gen1-style HTTP function that uses a dependency (dayjs) in its answer.
const dayjs = require('dayjs');

// GET /?date=2024-02-29&years=1 -> "2024-02-29 plus 1 year(s) is 2025-02-28"
exports.helloHttp = (req, res) => {
  const date = req.query.date || '2024-01-01';
  const years = Number(req.query.years || 1);
  const later = dayjs(date).add(years, 'year').format('YYYY-MM-DD');
  res.send(`${date} plus ${years} year(s) is ${later}\n`);
};
