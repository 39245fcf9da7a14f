from dronedepth.cli import main

raise SystemExit(main())
