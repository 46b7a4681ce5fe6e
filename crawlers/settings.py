"""Scrapy settings of the crawl room: polite, bounded, breadth-first crawling of named sources.

`crawlers.run` starts from these and overrides the few that a corpus configuration may set
(user agent, timeout, size limit, robots, concurrency, AutoThrottle, retries, state folder)."""
from scrapy.settings import default_settings as _scrapy_defaults

BOT_NAME = "tcm-corpus"
SPIDER_MODULES = ["crawlers.spiders"]
NEWSPIDER_MODULE = "crawlers.spiders"

USER_AGENT = "tcm-corpus/0.1 (+https://example.invalid/tcm-corpus)"
ROBOTSTXT_OBEY = True

CONCURRENT_REQUESTS = 8
CONCURRENT_REQUESTS_PER_DOMAIN = 4
DOWNLOAD_TIMEOUT = 15
DOWNLOAD_MAXSIZE = 5 * 1024 * 1024
DOWNLOAD_WARNSIZE = 0

# Start gently and let observed latency set the pace; Scrapy's own 5 s start is slow for small sites.
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_START_DELAY = 1.0
AUTOTHROTTLE_MAX_DELAY = 30.0
AUTOTHROTTLE_TARGET_CONCURRENCY = 2.0

RETRY_ENABLED = True
RETRY_TIMES = 2
RETRY_HTTP_CODES = [500, 502, 503, 504, 522, 524, 408, 429]
# Seconds before the first retry of a request, doubled for each further one (crawlers.middlewares).
RETRY_BACKOFF_BASE = 0.5
# The longest Retry-After a crawl waits for; a server asking for more gets this.
RETRY_AFTER_MAX = 60.0

# Breadth first, so that a page budget (max_pages) is spent on the pages nearest the seeds.
DEPTH_PRIORITY = 1
SCHEDULER_MEMORY_QUEUE = "scrapy.squeues.FifoMemoryQueue"

# Depth and page budgets are per source and enforced by the spider.
DEPTH_LIMIT = 0
REDIRECT_MAX_TIMES = 10
COOKIES_ENABLED = False
TELNETCONSOLE_ENABLED = False
# Scrapy's remote-control HTTP server (a loopback port and a job file holding its token for
# each crawl): like the telnet console, nothing a corpus crawl uses.
REMOTE_CONTROL_ENABLED = False

# Scrapy imports every component named in EXTENSIONS or DOWNLOADER_MIDDLEWARES, even one set to
# None there, so the parts a corpus crawl never uses are left out of the base lists instead: the
# crawl process then never imports them (the remote control alone imports aiohttp, the cookie
# middleware tldextract, together a fifth of the process's start).
UNUSED_COMPONENTS = frozenset({
    "scrapy.extensions.remote_control.RemoteControl",  # REMOTE_CONTROL_ENABLED is False
    "scrapy.extensions.telnet.TelnetConsole",  # TELNETCONSOLE_ENABLED is False
    "scrapy.extensions.feedexport.FeedExporter",  # pages go to the dataset, not to feeds
    "scrapy.extensions.memdebug.MemoryDebugger",
    "scrapy.downloadermiddlewares.cookies.CookiesMiddleware",  # COOKIES_ENABLED is False
    "scrapy.downloadermiddlewares.httpcache.HttpCacheMiddleware",  # the crawl state is the cache
})
EXTENSIONS_BASE = {k: v for k, v in _scrapy_defaults.EXTENSIONS_BASE.items() if k not in UNUSED_COMPONENTS}
DOWNLOADER_MIDDLEWARES_BASE = {k: v for k, v in _scrapy_defaults.DOWNLOADER_MIDDLEWARES_BASE.items() if k not in UNUSED_COMPONENTS}
# The spider follows http(s) links only and Scrapy follows no redirect to another scheme: no
# handler for data:, file:, s3: or ftp: URLs is loaded.
DOWNLOAD_HANDLERS = {"data": None, "file": None, "s3": None, "ftp": None}
LOG_LEVEL = "INFO"
LOGSTATS_INTERVAL = 60.0

DOWNLOADER_MIDDLEWARES = {
    "scrapy.downloadermiddlewares.offsite.OffsiteMiddleware": None,
    "crawlers.middlewares.SourceDomainsMiddleware": 50,
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "crawlers.middlewares.RetryAfterMiddleware": 550,
    "crawlers.middlewares.RetryBackoffMiddleware": 560,
}
ITEM_PIPELINES = {
    "crawlers.pipelines.PageDatasetPipeline": 300,
}

# Where the pipeline writes, and the crawl's state folder; set by crawlers.run for each crawl.
PAGES_OUTPUT = None
CRAWL_STATE_DIR = None
PAGES_MANIFEST = {}
