"""`sdq cache`: the operator's view of the result cache (entries in Redis; stored objects stay)."""
from __future__ import annotations

import json
import sys


def cmd_cache(args) -> int:
    """`sdq cache count` prints how many entries there are; `sdq cache clear` drops them all."""
    from sdq.config import Settings
    from sdq.state.redisconn import connect
    from sdq.state.resultindex import ResultIndex

    index = ResultIndex(connect(Settings.from_env().redis_url))
    if args.cache_command == "clear":
        n = index.clear()
        print(json.dumps({"cleared": n}) if args.json else f"dropped {n} result cache entries "
              "(stored images are kept; identical items now run again)", file=sys.stdout)
        return 0
    n = index.count()
    print(json.dumps({"entries": n}) if args.json else f"{n} result cache entries")
    return 0
