from hpmodel.cli import main

raise SystemExit(main())
