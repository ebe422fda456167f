// Firefox smoke test of the studio page: sign up, stream a reply over the WebSocket, and check that a
// hostile reply renders as text and runs nothing. Usage: node smoke.mjs BASE_URL FIREFOX_PATH
// Exits non-zero with a message on the first failed expectation.
import puppeteer from 'puppeteer-core';

const [baseUrl, firefox] = process.argv.slice(2);
const TIMEOUT = 20000;
const fail = (message) => { throw new Error(message); };

const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: firefox,
  headless: true,
  // No network but loopback here: keep Firefox from phoning home at start.
  extraPrefsFirefox: {
    'app.update.enabled': false,
    'browser.safebrowsing.malware.enabled': false,
    'browser.safebrowsing.phishing.enabled': false,
    'network.captive-portal-service.enabled': false,
    'datareporting.healthreport.uploadEnabled': false,
  },
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const errors = [];
  page.on('pageerror', (error) => errors.push(String(error)));

  await page.goto(baseUrl, { waitUntil: 'load' });
  await page.click('#tab-signup');
  await page.type('#signup-email', `firefox-${Date.now()}@example.com`);
  await page.type('#signup-password', 'violet-Harbor-73-kettle');
  await page.click('#signup-form button[type=submit]');
  await page.waitForSelector('#app-view:not([hidden])');

  // A streamed reply: caught while it is still streaming, then completed with the whole text.
  await page.select('#model-select', 'slow/gpt-test');
  await page.type('#composer-input', 'Hello from Firefox');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => {
    const reply = [...document.querySelectorAll('article.msg.assistant')].pop();
    return reply && reply.dataset.status === 'streaming' && reply.querySelector('.msg-body').textContent.includes('tok3');
  });
  await page.waitForFunction(() => {
    const reply = [...document.querySelectorAll('article.msg.assistant')].pop();
    return reply && reply.dataset.status === 'completed';
  }, { timeout: 60000 });
  const text = await page.$eval('article.msg.assistant:last-of-type .msg-body', (e) => e.textContent);
  if (!text.includes('tok199')) fail(`the streamed reply is incomplete: ${text.slice(-80)}`);

  // A hostile reply shows as text and runs nothing.
  await page.click('#new-chat');
  await page.select('#model-select', 'hostile/gpt-test');
  await page.type('#composer-input', 'Show me some **Markdown**');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => {
    const reply = [...document.querySelectorAll('article.msg.assistant')].pop();
    return reply && reply.dataset.status === 'completed';
  });
  const hostile = await page.$eval('article.msg.assistant:last-of-type .msg-body', (e) => ({
    text: e.textContent,
    dangerous: e.querySelectorAll('img, script, iframe, object, embed, [onerror], [onclick], a[href^="javascript"]').length,
    bold: e.querySelectorAll('strong').length,
  }));
  if (!hostile.text.includes('<script>window.__xss=2</script>')) fail('the hostile markup is not shown as text');
  if (hostile.dangerous !== 0) fail(`${hostile.dangerous} dangerous element(s) reached the DOM`);
  if (hostile.bold < 1) fail('Markdown was not rendered');
  const xss = await page.evaluate(() => typeof window.__xss);
  if (xss !== 'undefined') fail('hostile script ran');
  if (errors.length) fail(`page errors: ${errors.join('; ')}`);
  console.log(`firefox ${await browser.version()}: studio smoke passed`);
} finally {
  await browser.close();
}
